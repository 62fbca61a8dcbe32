// Package conformance runs Kubernetes' own network end-to-end tests (the
// tools module's e2e-network.test: upstream's suite with the sig-network
// specs) against the lab, and reads their outcome from the suite's JUnit
// report: the table `make conformance` prints.
package conformance

import (
	"regexp"
)

// Selection is what `make conformance` runs: the sig-network tests issue 16
// names (the Granular Checks, the Services basics, the two Conntrack tests,
// HostPort) and every other [sig-network] [Conformance] test of the pinned
// Kubernetes, all of which the lab meets (CoreDNS included, no
// LoadBalancer, no Internet). Names are as the suite prints them.
var Selection = []string{
	"[sig-network] API Server should have Endpoints and EndpointSlices pointing to API Server [Conformance]",
	"[sig-network] API Server should provide secure master service [Conformance]",
	"[sig-network] DNS should provide /etc/hosts entries for the cluster [Conformance]",
	"[sig-network] DNS should provide DNS for ExternalName services [Conformance]",
	"[sig-network] DNS should provide DNS for pods for Hostname [Conformance]",
	"[sig-network] DNS should provide DNS for pods for Subdomain [Conformance]",
	"[sig-network] DNS should provide DNS for services [Conformance]",
	"[sig-network] DNS should provide DNS for the cluster [Conformance]",
	"[sig-network] DNS should resolve DNS of partial qualified names for services [LinuxOnly] [Conformance]",
	"[sig-network] DNS should support configurable pod DNS nameservers [Conformance]",
	"[sig-network] EndpointSlice should create Endpoints and EndpointSlices for Pods matching a Service [Conformance]",
	"[sig-network] EndpointSlice should create and delete EndpointSlices for a Service with a selector that matches no pods [Conformance]",
	"[sig-network] EndpointSlice should support a Service with multiple endpoint IPs specified in multiple EndpointSlices [Conformance]",
	"[sig-network] EndpointSlice should support a Service with multiple ports specified in multiple EndpointSlices [Conformance]",
	"[sig-network] EndpointSlice should support creating EndpointSlice API operations [Conformance]",
	"[sig-network] EndpointSliceMirroring should mirror a custom Endpoints resource through create update and delete [Conformance]",
	"[sig-network] Endpoints should test the lifecycle of an Endpoint [Conformance]",
	"[sig-network] EndpointsController should create Endpoints for Pods matching a Service [Conformance]",
	"[sig-network] EndpointsController should create and delete Endpoints for a Service with a selector that matches no pods [Conformance]",
	"[sig-network] HostPort validates that there is no conflict between pods with same hostPort but different hostIP and protocol [LinuxOnly] [Conformance]",
	"[sig-network] Ingress API should support creating Ingress API operations [Conformance]",
	"[sig-network] IngressClass API should support creating IngressClass API operations [Conformance]",
	"[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http [Conformance] [NodeConformance]",
	"[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp [Conformance] [NodeConformance]",
	"[sig-network] Networking Granular Checks: Pods should function for node-pod communication: http [LinuxOnly] [Conformance] [NodeConformance]",
	"[sig-network] Networking Granular Checks: Pods should function for node-pod communication: udp [LinuxOnly] [Conformance] [NodeConformance]",
	"[sig-network] Proxy version v1 A set of valid responses are returned for both pod and service Proxy [Conformance]",
	"[sig-network] Proxy version v1 A set of valid responses are returned for both pod and service ProxyWithPath [Conformance]",
	"[sig-network] Proxy version v1 should proxy through a service and a pod [Conformance]",
	"[sig-network] Service endpoints latency should not be very high [Conformance]",
	"[sig-network] ServiceCIDR and IPAddress API should support IPAddress API operations [Conformance]",
	"[sig-network] ServiceCIDR and IPAddress API should support ServiceCIDR API operations [Conformance]",
	"[sig-network] Services should be able to change the type from ClusterIP to ExternalName [Conformance]",
	"[sig-network] Services should be able to change the type from ExternalName to ClusterIP [Conformance]",
	"[sig-network] Services should be able to change the type from ExternalName to NodePort [Conformance]",
	"[sig-network] Services should be able to change the type from NodePort to ExternalName [Conformance]",
	"[sig-network] Services should be able to create a functioning NodePort service [Conformance]",
	"[sig-network] Services should be able to switch session affinity for NodePort service [LinuxOnly] [Conformance]",
	"[sig-network] Services should be able to switch session affinity for service with type clusterIP [LinuxOnly] [Conformance]",
	"[sig-network] Services should complete a service status lifecycle [Conformance]",
	"[sig-network] Services should delete a collection of services [Conformance]",
	"[sig-network] Services should find a service from listing all namespaces [Conformance]",
	"[sig-network] Services should have session affinity work for NodePort service [LinuxOnly] [Conformance]",
	"[sig-network] Services should have session affinity work for service with type clusterIP [LinuxOnly] [Conformance]",
	"[sig-network] Services should serve a basic endpoint from pods [Conformance]",
	"[sig-network] Services should serve endpoints on same port and different protocols [Conformance]",
	"[sig-network] Services should serve multiport endpoints from pods [Conformance]",
	"[sig-network] Networking Granular Checks: Services should function for pod-Service: http",
	"[sig-network] Networking Granular Checks: Services should function for pod-Service: udp",
	"[sig-network] Networking Granular Checks: Services should function for node-Service: http",
	"[sig-network] Networking Granular Checks: Services should function for node-Service: udp",
	"[sig-network] Networking Granular Checks: Services should function for endpoint-Service: http",
	"[sig-network] Networking Granular Checks: Services should function for endpoint-Service: udp",
	"[sig-network] Networking Granular Checks: Services should function for multiple endpoint-Services with same selector",
	"[sig-network] Networking Granular Checks: Services should update endpoints: http",
	"[sig-network] Networking Granular Checks: Services should update endpoints: udp",
	"[sig-network] Networking Granular Checks: Services should update nodePort: http [Slow]",
	"[sig-network] Networking Granular Checks: Services should support basic nodePort: udp functionality",
	"[sig-network] Networking Granular Checks: Services should update nodePort: udp [Slow]",
	"[sig-network] Networking Granular Checks: Services should function for client IP based session affinity: http [LinuxOnly]",
	"[sig-network] Networking Granular Checks: Services should function for client IP based session affinity: udp [LinuxOnly]",
	"[sig-network] Networking Granular Checks: Services should be able to handle large requests: http",
	"[sig-network] Networking Granular Checks: Services should be able to handle large requests: udp",
	"[sig-network] Networking Granular Checks: Services should function for service endpoints using hostNetwork",
	"[sig-network] Conntrack should be able to preserve UDP traffic when server pod cycles for a ClusterIP service",
	"[sig-network] Conntrack should be able to preserve UDP traffic when server pod cycles for a NodePort service",
}

// Bounded is the part `make test` runs: the granular pod checks, pod to
// pod and node to pod, over HTTP and UDP.
var Bounded = []string{
	"[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http [Conformance] [NodeConformance]",
	"[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp [Conformance] [NodeConformance]",
	"[sig-network] Networking Granular Checks: Pods should function for node-pod communication: http [LinuxOnly] [Conformance] [NodeConformance]",
	"[sig-network] Networking Granular Checks: Pods should function for node-pod communication: udp [LinuxOnly] [Conformance] [NodeConformance]",
}

// Skip is a test of the named groups that the selection leaves out.
type Skip struct{ Name, Reason string }

// Skipped are the tests of the groups the selection leaves out.
var Skipped = []Skip{
	{"[sig-network] Networking Granular Checks: Services should function for pod-Service: sctp [Feature:SCTPConnectivity]", "SCTP is a feature upstream runs on demand ([Feature:SCTPConnectivity]); calyx and the lab carry TCP and UDP"},
	{"[sig-network] Networking Granular Checks: Services should function for node-Service: sctp [Feature:SCTPConnectivity]", "SCTP, as above"},
	{"[sig-network] Networking Granular Checks: Services should function for endpoint-Service: sctp [Feature:SCTPConnectivity]", "SCTP, as above"},
}

// Focus is the suite's --ginkgo.focus for names: each one whole, as the
// end of the spec's text (ginkgo matches against "Kubernetes e2e suite "
// and the name, so nothing anchors the start).
func Focus(names []string) string {
	re := ""
	for i, n := range names {
		if i > 0 {
			re += "|"
		}
		re += regexp.QuoteMeta(n) + "$"
	}
	return re
}
