package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/calyx-net/calyx/lab/cgroups"
	"github.com/calyx-net/calyx/lab/node"
)

// sandboxes per setup and run in the podstart part.
const podStartSandboxes = 30

// runPodStart times a pod's start as a kubelet asks for it, CRI
// RunPodSandbox until the sandbox is Ready (network included), and its
// StopPodSandbox, through each worker's containerd (Debian's 1.6 on one,
// 2.x on the other): calyx as installed by calyx-node, against Debian's
// ptp + host-local through the same containerd (its runtime handler
// "ref", whose CNI configuration is its own), sandbox by sandbox
// interleaved.
func runPodStart(ctx context.Context, e *Env) ([]Row, error) {
	var rows []Row
	for _, name := range e.Lab.Workers() {
		n, err := e.Lab.Client().Node(name)
		if err != nil {
			return nil, err
		}
		if err := installRef(e, n); err != nil {
			return nil, err
		}
		rt, conn, err := n.CRI()
		if err != nil {
			return nil, err
		}
		r, err := podStartOn(ctx, e, n, rt)
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		rows = append(rows, r...)
	}
	e.Note("podstart: CRI RunPodSandbox (the pause image, the pod's network) until the runtime reports the sandbox Ready, then StopPodSandbox (CNI DEL) and RemovePodSandbox, %d sandboxes per setup and run, straight to each worker's containerd as the kubelet talks to it; calyx is the conflist calyx-node installed, the reference Debian's ptp + host-local (%s) through the same containerd's runtime handler %q, sandbox by sandbox interleaved.", podStartSandboxes, e.Opts.RefCNIDir, node.RefCNIHandler)
	return rows, nil
}

// installRef puts the reference plugins into the node's CNI directory and
// their configuration where the ref handler reads it.
func installRef(e *Env, n *node.Node) error {
	for _, p := range []string{"ptp", "host-local"} {
		b, err := os.ReadFile(filepath.Join(e.Opts.RefCNIDir, p))
		if err != nil {
			return fmt.Errorf("the reference plugin %s: %w (apt-get install containernetworking-plugins)", p, err)
		}
		if err := os.WriteFile(n.Path("/opt/cni/bin/"+p), b, 0o755); err != nil {
			return err
		}
	}
	conf, _ := json.Marshal(map[string]any{
		"cniVersion": "1.0.0", "name": "bench-ref",
		"plugins": []any{map[string]any{
			"type": "ptp", "ipMasq": false, "mtu": 1480,
			"ipam": map[string]any{"type": "host-local", "ranges": []any{[]any{map[string]any{"subnet": "10.244.0.0/16"}}}},
		}},
	})
	if err := os.MkdirAll(n.Path("/etc/cni/ref.d"), 0o755); err != nil {
		return err
	}
	return os.WriteFile(n.Path("/etc/cni/ref.d/10-ref.conflist"), conf, 0o644)
}

// podStartOn starts and stops the sandboxes on one node, and returns its
// rows.
func podStartOn(ctx context.Context, e *Env, n *node.Node, rt runtimeapi.RuntimeServiceClient) ([]Row, error) {
	parent := filepath.Join(n.CgroupRoot, "bench")
	if _, err := cgroups.Create(n.Hierarchies, parent); err != nil {
		return nil, err
	}
	handlers := []string{"", node.RefCNIHandler}
	type stat struct{ startP50, startP99, stopP50 []float64 }
	stats := make([]stat, len(handlers))
	for run := range e.Opts.Runs {
		start := make([][]time.Duration, len(handlers))
		stop := make([][]time.Duration, len(handlers))
		for i := range podStartSandboxes {
			for k, h := range handlers {
				d, id, err := startSandbox(ctx, rt, parent, h, fmt.Sprintf("ps%d-%d-%d", run, k, i))
				if err != nil {
					return nil, err
				}
				start[k] = append(start[k], d)
				begin := time.Now()
				if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
					return nil, fmt.Errorf("StopPodSandbox: %w", err)
				}
				stop[k] = append(stop[k], time.Since(begin))
				if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
					return nil, fmt.Errorf("RemovePodSandbox: %w", err)
				}
			}
		}
		for k := range handlers {
			st := &stats[k]
			st.startP50 = append(st.startP50, ms(percentile(start[k], 50)))
			st.startP99 = append(st.startP99, ms(percentile(start[k], 99)))
			st.stopP50 = append(st.stopP50, ms(percentile(stop[k], 50)))
		}
		e.Logf("podstart: %s (%s) run %d/%d: RunPodSandbox → Ready p50 calyx %.1f ms, ref %.1f ms; StopPodSandbox p50 calyx %.1f ms, ref %.1f ms",
			n.Name, n.Runtime, run+1, e.Opts.Runs, stats[0].startP50[run], stats[1].startP50[run], stats[0].stopP50[run], stats[1].stopP50[run])
	}
	what := fmt.Sprintf("pod start via %s's %s (CRI RunPodSandbox → Ready), %d sandboxes", n.Name, n.Runtime, podStartSandboxes)
	ref := "ptp+host-local, same runtime"
	return []Row{
		{Part: "podstart", Metric: what + ", p50", Unit: "ms", Calyx: Of(stats[0].startP50...), RefName: ref, Ref: Of(stats[1].startP50...), Goal: RatioAtMost(1.5)},
		{Part: "podstart", Metric: what + ", p99", Unit: "ms", Calyx: Of(stats[0].startP99...), RefName: ref, Ref: Of(stats[1].startP99...)},
		{Part: "podstart", Metric: fmt.Sprintf("pod stop via %s's %s (CRI StopPodSandbox), p50", n.Name, n.Runtime), Unit: "ms", Calyx: Of(stats[0].stopP50...), RefName: ref, Ref: Of(stats[1].stopP50...)},
	}, nil
}

// startSandbox runs a sandbox as a kubelet would for a pod named name in
// namespace bench, and returns how long until the runtime reported it
// Ready.
func startSandbox(ctx context.Context, rt runtimeapi.RuntimeServiceClient, parent, handler, name string) (time.Duration, string, error) {
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: name + "-" + randSuffix()},
		Hostname: name,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: parent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD},
			},
		},
	}
	begin := time.Now()
	resp, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		return 0, "", fmt.Errorf("RunPodSandbox %s (handler %q): %w", name, handler, err)
	}
	for {
		st, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: resp.PodSandboxId})
		if err != nil {
			return 0, "", err
		}
		if st.Status.State == runtimeapi.PodSandboxState_SANDBOX_READY {
			return time.Since(begin), resp.PodSandboxId, nil
		}
		if time.Since(begin) > 30*time.Second {
			return 0, "", fmt.Errorf("sandbox %s not Ready after 30 s", name)
		}
	}
}
