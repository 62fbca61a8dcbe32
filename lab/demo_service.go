package lab

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"
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

// viaService downloads through the article's Service: kube-proxy's DNAT
// on the client's node sends the request to the pod IP, and the server
// answers from the pod IP, which busybox's tftp client follows.
func (d *demo) viaService(ctx context.Context) error {
	key := "default/" + DemoService
	err := d.l.step(fmt.Sprintf("Service %s %s:69/UDP in front of the server pod, through kube-proxy (iptables mode)", key, DemoClusterIP), func() error {
		eps, err := d.c.WaitEndpoints(ctx, key, 1, 30*time.Second)
		if err == nil {
			fmt.Fprintf(d.out, "  EndpointSlice of %s (kube-controller-manager): %v\n", key, eps)
		}
		return err
	})
	if err != nil {
		return err
	}
	if err := d.showNATPath(ctx, key); err != nil {
		return err
	}
	cp, err := StartCapture(DemoClientNode, d.client.HostIface)
	if err != nil {
		return err
	}
	var got string
	argv := []string{"tftp", "-g", "-r", DemoFile, "-l", "-", DemoClusterIP}
	err = d.l.step(fmt.Sprintf("kubectl exec tftp-client -- %s   (the ClusterIP; captured on %s)", strings.Join(argv, " "), d.client.HostIface), func() error {
		got, err = d.c.Exec(ctx, DemoClientPod, argv...)
		return err
	})
	time.Sleep(200 * time.Millisecond)
	packets := cp.Stop()
	if err != nil {
		return err
	}
	if got != string(DemoContent()) {
		d.problem("the download through %s differs from the served file (%d bytes)", DemoClusterIP, len(got))
	}
	d.checkServicePackets(cp, packets)
	return nil
}

// showNATPath prints the chains kube-proxy wrote for the Service on the
// client's node, once they lead to the server pod.
func (d *demo) showNATPath(ctx context.Context, key string) error {
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		save, err := d.c.Output(ctx, DemoClientNode, "iptables-save", "-t", "nat")
		if err != nil {
			return err
		}
		chains, rules := NATChainPath(save, key, DemoClusterIP)
		if chains != "" && strings.Contains(strings.Join(rules, "\n"), d.server.IP+":69") {
			fmt.Fprintf(d.out, "\n$ iptables-save -t nat   # on %s, the path of %s:69\n%s\n  %s\n", DemoClientNode, DemoClusterIP, chains, strings.Join(rules, "\n  "))
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-proxy on %s wrote no DNAT for %s to %s after 30s: kubectl -n kube-system logs -l k8s-app=kube-proxy", DemoClientNode, key, d.server.IP)
		}
	}
}

// checkServicePackets finds, on the client's veth, the request to the
// ClusterIP and the reply from the pod IP: the article's observation.
func (d *demo) checkServicePackets(cp *Capture, packets []CapturedPacket) {
	var request, reply *Dissected
	for _, p := range packets {
		t := Dissect(cp.LinkType(), p.Data)
		switch {
		case request == nil && strings.HasPrefix(t.TFTP, "RRQ") && t.Src == d.client.IP:
			request = &t
		case reply == nil && strings.HasPrefix(t.TFTP, "DATA") && t.Dst == d.client.IP:
			reply = &t
		}
	}
	fmt.Fprintf(d.out, "\non the client's %s (the article's observation):\n", d.client.HostIface)
	if request != nil {
		fmt.Fprintf(d.out, "  request  %s:%d → %s:%d  %s\n", request.Src, request.SrcPort, request.Dst, request.DstPort, request.TFTP)
	}
	if reply != nil {
		fmt.Fprintf(d.out, "  reply    %s:%d → %s:%d  %s\n", reply.Src, reply.SrcPort, reply.Dst, reply.DstPort, reply.TFTP)
	}
	switch {
	case request == nil || request.Dst != DemoClusterIP || request.DstPort != 69:
		d.problem("on %s: no RRQ to %s:69 from the client pod", d.client.HostIface, DemoClusterIP)
	case reply == nil || reply.Src != d.server.IP:
		d.problem("on %s: no DATA from the server pod's %s", d.client.HostIface, d.server.IP)
	default:
		fmt.Fprintf(d.out, "the request goes to the ClusterIP %s, the reply comes from the pod IP %s and a new port: a client that keeps the ClusterIP (tftp-hpa) needs the conntrack helper (annotate the Service calyx.dev/conntrack-helper=tftp)\n", DemoClusterIP, d.server.IP)
	}
}
