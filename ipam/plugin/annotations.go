package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"

	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
)

// Annotator reads the annotations a pod's ADD depends on. An object that
// does not exist has none: a runtime's sandbox for a pod the API server
// never knew (or already forgot) gets an address like any other.
type Annotator interface {
	// PodAnnotations reads the pod's; uid is the sandbox's pod's UID, ""
	// when the runtime did not pass it.
	PodAnnotations(ctx context.Context, namespace, name, uid string) (map[string]string, error)
	NamespaceAnnotations(ctx context.Context, name string) (map[string]string, error)
}

// KubeAnnotator reads annotations from the API server: object metadata
// only, with get on pods and namespaces, which is all the CNI plugins'
// account gains for it.
type KubeAnnotator struct {
	Client metadata.Interface
}

// The resources the annotations are read from, by name here and through
// the agent's informers.
var (
	PodsResource       = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	NamespacesResource = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
)

func (k KubeAnnotator) PodAnnotations(ctx context.Context, namespace, name, _ string) (map[string]string, error) {
	return annotationsOf(k.Client.Resource(PodsResource).Namespace(namespace).Get(ctx, name, metav1.GetOptions{}))
}

func (k KubeAnnotator) NamespaceAnnotations(ctx context.Context, name string) (map[string]string, error) {
	return annotationsOf(k.Client.Resource(NamespacesResource).Get(ctx, name, metav1.GetOptions{}))
}

// Cache is what the agent's informers hold of the pods on its node and of
// the namespaces; ok says whether they can vouch for the answer (synced,
// and the object seen).
type Cache interface {
	Pod(namespace, name string) (uid string, annotations map[string]string, ok bool)
	Namespace(name string) (annotations map[string]string, ok bool)
}

// CachedAnnotator answers from Cache where it can and asks API otherwise,
// so that a pod start waits for no API round trip: the pod the kubelet
// starts is in the agent's node-scoped pod informer by the time its
// sandbox asks for an address. A pod is taken from the cache only when its
// UID is the sandbox's: a pod deleted and recreated under the same name
// (a StatefulSet's, one pinned with calyx.dev/ipAddrs) may not have
// reached the cache yet, and its predecessor's annotations must not
// answer for it. Without a UID from the runtime the API answers.
type CachedAnnotator struct {
	Cache Cache
	API   Annotator
	// Read, if set, is told of every read: kind "pod" or "namespace",
	// source "cache" or "api".
	Read func(kind, source string)
}

func (c CachedAnnotator) read(kind, source string) {
	if c.Read != nil {
		c.Read(kind, source)
	}
}

func (c CachedAnnotator) PodAnnotations(ctx context.Context, namespace, name, uid string) (map[string]string, error) {
	if uid != "" {
		if got, ann, ok := c.Cache.Pod(namespace, name); ok && got == uid {
			c.read("pod", "cache")
			return ann, nil
		}
	}
	c.read("pod", "api")
	return c.API.PodAnnotations(ctx, namespace, name, uid)
}

// NamespaceAnnotations answers from the cache when it has the namespace;
// one it has not seen may be new, so the API answers for it.
func (c CachedAnnotator) NamespaceAnnotations(ctx context.Context, name string) (map[string]string, error) {
	if ann, ok := c.Cache.Namespace(name); ok {
		c.read("namespace", "cache")
		return ann, nil
	}
	c.read("namespace", "api")
	return c.API.NamespaceAnnotations(ctx, name)
}

func annotationsOf(m *metav1.PartialObjectMetadata, err error) (map[string]string, error) {
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return m.Annotations, nil
}

// podRequest is what a pod's annotations ask of the IPAM, and which
// annotation asked, for the errors a user reads in `kubectl describe pod`.
type podRequest struct {
	req    ipam.Request
	source string // e.g. "annotation calyx.dev/ipv4pools of namespace blue"; "" for none
}

// requestFor reads the pod's annotations and, when they ask nothing, its
// namespace's. The pod's calyx.dev/ipAddrs wins over any pool choice, the
// pod's calyx.dev/ipv4pools over its namespace's, and both over the
// netconf's pools.
func requestFor(ctx context.Context, a Annotator, pod podArgs) (podRequest, error) {
	if pod.Namespace == "" || pod.Name == "" {
		return podRequest{}, nil // not a Kubernetes pod: nothing to read
	}
	podAnn, err := a.PodAnnotations(ctx, pod.Namespace, pod.Name, pod.UID)
	if err != nil {
		return podRequest{}, fmt.Errorf("reading the annotations of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	where := "pod " + pod.Namespace + "/" + pod.Name
	r, err := parseRequest(podAnn, where, true)
	if err != nil || r.source != "" {
		return r, err
	}
	nsAnn, err := a.NamespaceAnnotations(ctx, pod.Namespace)
	if err != nil {
		return podRequest{}, fmt.Errorf("reading the annotations of namespace %s: %w", pod.Namespace, err)
	}
	return parseRequest(nsAnn, "namespace "+pod.Namespace, false)
}

// parseRequest reads one object's annotations; addrs says whether
// calyx.dev/ipAddrs is read there (a Pod's, not a Namespace's).
func parseRequest(ann map[string]string, where string, addrs bool) (podRequest, error) {
	bad := func(key string, err error) error {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("invalid annotation %s of %s: %v", key, where, err), "")
	}
	if v, ok := ann[v1alpha1.AnnotationIPAddrs]; ok && addrs {
		a, err := parseAddrs(v)
		if err != nil {
			return podRequest{}, bad(v1alpha1.AnnotationIPAddrs, err)
		}
		return podRequest{req: ipam.Request{Addr: a}, source: fmt.Sprintf("annotation %s of %s", v1alpha1.AnnotationIPAddrs, where)}, nil
	}
	if v, ok := ann[v1alpha1.AnnotationIPv4Pools]; ok {
		pools, err := parsePools(v)
		if err != nil {
			return podRequest{}, bad(v1alpha1.AnnotationIPv4Pools, err)
		}
		return podRequest{req: ipam.Request{Pools: pools}, source: fmt.Sprintf("annotation %s of %s", v1alpha1.AnnotationIPv4Pools, where)}, nil
	}
	return podRequest{}, nil
}

// parsePools reads calyx.dev/ipv4pools: a JSON list of pool names or
// CIDRs, at least one.
func parsePools(v string) ([]string, error) {
	var pools []string
	if err := json.Unmarshal([]byte(v), &pools); err != nil {
		return nil, fmt.Errorf("%q is not a JSON list of pool names or CIDRs, such as [\"blue-pool\"]: %v", v, err)
	}
	if len(pools) == 0 {
		return nil, fmt.Errorf("%q names no pool: name one, or remove the annotation", v)
	}
	for _, p := range pools {
		if strings.TrimSpace(p) == "" || len(p) > 253 {
			return nil, fmt.Errorf("%q has an invalid entry %q: name an IPPool or give its CIDR", v, p)
		}
	}
	return pools, nil
}

// parseAddrs reads calyx.dev/ipAddrs: a JSON list with exactly one IPv4
// address, as calyx gives a pod one.
func parseAddrs(v string) (netip.Addr, error) {
	var addrs []string
	if err := json.Unmarshal([]byte(v), &addrs); err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not a JSON list of addresses, such as [\"192.168.29.67\"]: %v", v, err)
	}
	if len(addrs) != 1 {
		return netip.Addr{}, fmt.Errorf("%q has %d addresses: calyx gives a pod exactly one IPv4 address", v, len(addrs))
	}
	a, err := netip.ParseAddr(addrs[0])
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", addrs[0])
	}
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s is not an IPv4 address: calyx pods are IPv4", a)
	}
	return a, nil
}
