package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// The article's Service in front of the TFTP server pod.
const (
	DemoService   = "tftp-server"
	DemoClusterIP = "10.96.62.142"
)

// NATChainPath is the path kube-proxy's nat rules take a packet to the
// Service's ClusterIP through, as `iptables-save -t nat` shows them: the
// KUBE-SERVICES rule that matches it, the KUBE-SVC chain it jumps to, and
// the KUBE-SEP chains with their DNAT. chains is KUBE-SERVICES → KUBE-SVC-…
// → KUBE-SEP-…; rules are the lines that make it.
func NATChainPath(iptablesSave, service, clusterIP string) (chains string, rules []string) {
	lines := strings.Split(iptablesSave, "\n")
	jump := regexp.MustCompile(`-j (KUBE-(?:SVC|SEP)-[A-Z0-9]+)`)
	var svc string
	for _, l := range lines {
		if strings.HasPrefix(l, "-A KUBE-SERVICES ") && strings.Contains(l, "-d "+clusterIP+"/32") && strings.Contains(l, service) {
			if m := jump.FindStringSubmatch(l); m != nil {
				svc = m[1]
				rules = append(rules, l)
				break
			}
		}
	}
	if svc == "" {
		return "", nil
	}
	var seps []string
	for _, l := range lines {
		if !strings.HasPrefix(l, "-A "+svc+" ") {
			continue
		}
		rules = append(rules, l)
		if m := jump.FindStringSubmatch(l); m != nil && strings.HasPrefix(m[1], "KUBE-SEP-") {
			seps = append(seps, m[1])
		}
	}
	for _, sep := range seps {
		for _, l := range lines {
			if strings.HasPrefix(l, "-A "+sep+" ") && strings.Contains(l, "DNAT") {
				rules = append(rules, l)
			}
		}
	}
	return "KUBE-SERVICES → " + svc + " → " + strings.Join(seps, ", "), rules
}

// demoService puts the article's ClusterIP Service in front of the server
// pod and downloads through it: kube-proxy's DNAT on the client's node
// sends the request to the pod IP, and the server answers from the pod IP,
// which the lab's client follows. It returns what differs from that.
func demoService(ctx context.Context, l *Lab, out io.Writer, server, client *PodState) (problems []string, err error) {
	c := l.Client()
	key := "default/" + DemoService
	err = l.step(fmt.Sprintf("Service %s %s:69/UDP for the server pod, through kube-proxy (iptables mode)", key, DemoClusterIP), func() error {
		if _, err := c.AddService(ctx, ServiceSpec{Namespace: "default", Name: DemoService, Selector: map[string]string{"app": "tftp-server"}, Ports: []string{"69/UDP"}, ClusterIP: DemoClusterIP}); err != nil {
			return err
		}
		eps, err := c.WaitEndpoints(ctx, key, 1, 30*time.Second)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "  EndpointSlice of %s (kube-controller-manager): %v\n", key, eps)
		return nil
	})
	if err != nil {
		return nil, err
	}
	var chains string
	var rules []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		save, err := c.Output(ctx, DemoClientNode, "iptables-save", "-t", "nat")
		if err != nil {
			return nil, err
		}
		if chains, rules = NATChainPath(save, key, DemoClusterIP); chains != "" && strings.Contains(strings.Join(rules, "\n"), server.IP+":69") {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("kube-proxy on %s wrote no DNAT for %s to %s after 30s: see its log in %s", DemoClientNode, key, server.IP, l.nodeDir(DemoClientNode))
		}
	}
	fmt.Fprintf(out, "\n$ iptables-save -t nat   # on %s, the path of %s:69\n%s\n  %s\n", DemoClientNode, DemoClusterIP, chains, strings.Join(rules, "\n  "))

	cp, err := StartCapture(DemoClientNode, client.HostIface)
	if err != nil {
		return nil, err
	}
	got := filepath.Join(l.Dir(), "downloaded-via-service.bin")
	err = l.step(fmt.Sprintf("%s downloads %s from %s:69, the ClusterIP, captured on %s", DemoClientPod, DemoFile, DemoClusterIP, client.HostIface), func() error {
		_, err := c.Output(ctx, DemoClientPod, filepath.Join(l.opts.BinDir, "calyx-lab"), "tftp-get", "--server", DemoClusterIP, "--file", DemoFile, "--out", got)
		return err
	})
	time.Sleep(200 * time.Millisecond)
	packets := cp.Stop()
	if err != nil {
		return nil, err
	}
	if b, _ := os.ReadFile(got); string(b) != string(DemoContent()) {
		problems = append(problems, fmt.Sprintf("the download through %s differs from the served file (%d bytes)", DemoClusterIP, len(b)))
	}
	var request, reply *Dissected
	for _, p := range packets {
		d := Dissect(cp.LinkType(), p.Data)
		switch {
		case request == nil && strings.HasPrefix(d.TFTP, "RRQ") && d.Src == client.IP:
			request = &d
		case reply == nil && strings.HasPrefix(d.TFTP, "DATA") && d.Dst == client.IP:
			reply = &d
		}
	}
	fmt.Fprintf(out, "\non the client's %s (the article's observation):\n", client.HostIface)
	if request != nil {
		fmt.Fprintf(out, "  request  %s:%d → %s:%d  %s\n", request.Src, request.SrcPort, request.Dst, request.DstPort, request.TFTP)
	}
	if reply != nil {
		fmt.Fprintf(out, "  reply    %s:%d → %s:%d  %s\n", reply.Src, reply.SrcPort, reply.Dst, reply.DstPort, reply.TFTP)
	}
	switch {
	case request == nil || request.Dst != DemoClusterIP || request.DstPort != 69:
		problems = append(problems, fmt.Sprintf("on %s: no RRQ to %s:69 from the client pod", client.HostIface, DemoClusterIP))
	case reply == nil || reply.Src != server.IP:
		problems = append(problems, fmt.Sprintf("on %s: no DATA from the server pod's %s", client.HostIface, server.IP))
	default:
		fmt.Fprintf(out, "the request goes to the ClusterIP %s, the reply comes from the pod IP %s and a new port: a client that keeps the ClusterIP (tftp-hpa) needs the conntrack helper (annotate the Service calyx.dev/conntrack-helper=tftp)\n", DemoClusterIP, server.IP)
	}
	return problems, nil
}
