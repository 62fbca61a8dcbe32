package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/calyx-net/calyx/agent/nsexec"
)

// pods for the cni part; the issue asks for at least 200.
const cniPods = 200

// cniNamespace is the namespace of the part's pods.
const cniNamespace = "bench"

// cniSetup is one way of wiring pods on a node: a conflist and the
// directory its plugins come from.
type cniSetup struct {
	name string
	node string // the node namespace the runtime calls from
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
}

// calyxSetup is the node's real conflist, as calyx-node's install-cni
// wrote it: calyx with calyx-ipam (and whatever the IPAM talks to), then
// portmap, run from the host on the node's files.
func calyxSetup(e *Env, node string) (*cniSetup, error) {
	return hostSetup(e, node, "calyx", false)
}

// hostSetup is the node's conflist run from the host (lab.HostCNI).
func hostSetup(e *Env, node, name string, ipamOnHost bool) (*cniSetup, error) {
	binDir, conf, err := e.Lab.Client().HostCNI(node, ipamOnHost)
	if err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		return nil, fmt.Errorf("loading %s's conflist: %w", node, err)
	}
	cache := filepath.Join(e.Dir, "cni-cache-"+strings.ReplaceAll(name, " ", "-")+"-"+node)
	return &cniSetup{name: name, node: node, list: list,
		cni: libcni.NewCNIConfigWithCacheDir([]string{binDir}, cache, nil)}, nil
}

// withoutPortmap is the same conflist cut to its first plugin, calyx: the
// difference to the full chain is what portmap costs.
func withoutPortmap(full *cniSetup) (*cniSetup, error) {
	var list map[string]any
	if err := json.Unmarshal(full.list.Bytes, &list); err != nil {
		return nil, err
	}
	list["plugins"] = list["plugins"].([]any)[:1]
	b, _ := json.Marshal(list)
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return nil, err
	}
	return &cniSetup{name: full.name + " without portmap", node: full.node, list: l, cni: full.cni}, nil
}

// withoutAgent is the calyx entry alone with ipam.agent_socket removed:
// calyx-ipam runs as a binary with its own API client, as it does while
// the agent is down (and as every ADD did before the socket).
func withoutAgent(e *Env, node string) (*cniSetup, error) {
	s, err := hostSetup(e, node, "calyx, calyx-ipam binary", true)
	if err != nil {
		return nil, err
	}
	return withoutPortmap(s)
}

// refSetup is Debian's ptp with host-local, the plainest pair of plugins
// that does the same job: a veth with a host route per pod.
func refSetup(e *Env, node string) (*cniSetup, error) {
	dir := e.Opts.RefCNIDir
	for _, p := range []string{"ptp", "host-local"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			return nil, fmt.Errorf("the reference plugin %s is not in %s: apt-get install containernetworking-plugins", p, dir)
		}
	}
	conf := map[string]any{
		"cniVersion": "1.0.0", // what Debian's ptp speaks
		"name":       "bench-ref",
		"plugins": []any{map[string]any{
			"type": "ptp", "ipMasq": false, "mtu": 1480,
			"ipam": map[string]any{
				"type": "host-local", "dataDir": filepath.Join(e.Dir, "host-local-"+node),
				"ranges": []any{[]any{map[string]any{"subnet": "10.244.0.0/16"}}},
			},
		}},
	}
	b, _ := json.Marshal(conf)
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return nil, err
	}
	return &cniSetup{name: "ptp + host-local", node: node, list: list,
		cni: libcni.NewCNIConfigWithCacheDir([]string{dir}, filepath.Join(e.Dir, "cni-cache-ref-"+node), nil)}, nil
}

// benchPod is a pod namespace the runtime wires.
type benchPod struct {
	namespace, name, netns, id string
	ip                         string
	uid                        string // its Pod object's, if it has one
}

func newBenchPod(name string) (*benchPod, error) {
	p := &benchPod{namespace: cniNamespace, name: name, netns: "cxb-" + name, id: randSuffix() + randSuffix() + name}
	return p, nsexec.CreateNamed(p.netns)
}

func (p *benchPod) rt() *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{
		ContainerID: p.id, NetNS: nsexec.NamedPath(p.netns), IfName: "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.namespace},
			{"K8S_POD_NAME", p.name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.id},
		},
		CapabilityArgs: map[string]any{"portMappings": []any{}},
	}
	if p.uid != "" {
		rt.Args = append(rt.Args, [2]string{"K8S_POD_UID", p.uid})
	}
	return rt
}

// add runs ADD from the node's namespace, as containerd on the node would,
// and returns how long it took.
func (s *cniSetup) add(ctx context.Context, p *benchPod) (time.Duration, error) {
	var took time.Duration
	err := inNetNS(s.node, func() error {
		begin := time.Now()
		r, err := s.cni.AddNetworkList(ctx, s.list, p.rt())
		took = time.Since(begin)
		if err != nil {
			return err
		}
		res, err := current.NewResultFromResult(r)
		if err != nil {
			return err
		}
		for _, ip := range res.IPs {
			p.ip = ip.Address.IP.String()
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("%s: ADD of %s on %s: %w", s.name, p.name, s.node, err)
	}
	return took, nil
}

func (s *cniSetup) del(ctx context.Context, p *benchPod) (time.Duration, error) {
	var took time.Duration
	err := inNetNS(s.node, func() error {
		begin := time.Now()
		err := s.cni.DelNetworkList(ctx, s.list, p.rt())
		took = time.Since(begin)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("%s: DEL of %s on %s: %w", s.name, p.name, s.node, err)
	}
	return took, nil
}

// runCNI times ADD and DEL of the same pods through calyx and the
// reference, interleaved pod by pod on the same node so that both share
// the machine's noise.
func runCNI(ctx context.Context, e *Env) ([]Row, error) {
	node := e.Lab.Workers()[0]
	cx, err := calyxSetup(e, node)
	if err != nil {
		return nil, err
	}
	ref, err := refSetup(e, node)
	if err != nil {
		return nil, err
	}
	alone, err := withoutPortmap(cx)
	if err != nil {
		return nil, err
	}
	binary, err := withoutAgent(e, node)
	if err != nil {
		return nil, err
	}
	type stat struct{ addP50, addP99, delP50, delP99 []float64 }
	// The pair first: calyx + calyx-ipam (through the agent, as
	// the shipped conflist has it) against ptp + host-local.
	setups := []*cniSetup{alone, ref, cx, binary}
	stats := make([]stat, len(setups))
	for run := range e.Opts.Runs {
		pods := make([][]*benchPod, len(setups))
		cleanup := func() {
			for _, ps := range pods {
				for _, p := range ps {
					nsexec.DeleteNamed(p.netns)
				}
			}
			if err := deleteAPIPods(context.WithoutCancel(ctx), e.Lab.Client().Kube, cniNamespace); err != nil {
				e.Logf("cni: deleting the part's Pod objects: %v", err)
			}
		}
		for i := range cniPods {
			for k := range setups {
				p, err := newBenchPod(fmt.Sprintf("%d%d-%d", k, run, i))
				if err != nil {
					cleanup()
					return nil, err
				}
				pods[k] = append(pods[k], p)
			}
		}
		// Pods as a kubelet's sandboxes have them, for the setups that
		// read their annotations (ptp + host-local reads none).
		var withObjects []*benchPod
		for k, s := range setups {
			if s != ref {
				withObjects = append(withObjects, pods[k]...)
			}
		}
		if err := createAPIPods(ctx, e.Lab.Client(), node, withObjects); err != nil {
			cleanup()
			return nil, err
		}
		add := make([][]time.Duration, len(setups))
		del := make([][]time.Duration, len(setups))
		var runErr error
	adds:
		for i := range cniPods {
			for k, s := range setups {
				d, err := s.add(ctx, pods[k][i])
				if err != nil {
					runErr = err
					break adds
				}
				add[k] = append(add[k], d)
			}
		}
		for i := range cniPods {
			for k, s := range setups {
				if d, err := s.del(ctx, pods[k][i]); err == nil {
					del[k] = append(del[k], d)
				} else if runErr == nil {
					runErr = err
				}
			}
		}
		cleanup()
		if runErr != nil {
			return nil, runErr
		}
		for k := range setups {
			st := &stats[k]
			st.addP50 = append(st.addP50, ms(percentile(add[k], 50)))
			st.addP99 = append(st.addP99, ms(percentile(add[k], 99)))
			st.delP50 = append(st.delP50, ms(percentile(del[k], 50)))
			st.delP99 = append(st.delP99, ms(percentile(del[k], 99)))
		}
		e.Logf("cni: run %d/%d: ADD p50 calyx+calyx-ipam %.1f ms (shipped conflist with portmap %.1f, calyx-ipam binary %.1f), ref %.1f ms; DEL p50 %.1f ms, ref %.1f ms",
			run+1, e.Opts.Runs, stats[0].addP50[run], stats[2].addP50[run], stats[3].addP50[run], stats[1].addP50[run], stats[0].delP50[run], stats[1].delP50[run])
	}
	sc, sr, sf, sb := stats[0], stats[1], stats[2], stats[3]
	refName := "ptp+host-local"
	metric := func(what string) string { return fmt.Sprintf("%s over %d pods", what, cniPods) }
	e.Note("cni: calyx + calyx-ipam is the calyx entry of the lab node's own conflist (calyx-ipam answered by the node's agent over ipam.agent_socket) through libcni from node %s's namespace; the reference is Debian's ptp + host-local (%s) on the same node, pod by pod interleaved. Every calyx sandbox has a Pod object bound to the node (refused by its kubelet, which starts no sandbox of its own) and passes its UID as K8S_POD_UID, as a runtime does, so the IPAM's annotation reads take a real pod start's path. Extra rows, interleaved too: the whole shipped conflist (calyx, then portmap, which the reference lacks), and calyx-ipam run as a binary with its own API client (agent_socket removed: the path while the agent is down, and every ADD's before the socket).", node, e.Opts.RefCNIDir)
	return []Row{
		{Part: "cni", Metric: metric("ADD p50, calyx + calyx-ipam"), Unit: "ms", Calyx: Of(sc.addP50...), RefName: refName, Ref: Of(sr.addP50...), Goal: RatioAtMost(1.5)},
		{Part: "cni", Metric: metric("ADD p99, calyx + calyx-ipam"), Unit: "ms", Calyx: Of(sc.addP99...), RefName: refName, Ref: Of(sr.addP99...), Goal: RatioAtMost(3)},
		{Part: "cni", Metric: metric("DEL p50, calyx + calyx-ipam"), Unit: "ms", Calyx: Of(sc.delP50...), RefName: refName, Ref: Of(sr.delP50...)},
		{Part: "cni", Metric: metric("DEL p99, calyx + calyx-ipam"), Unit: "ms", Calyx: Of(sc.delP99...), RefName: refName, Ref: Of(sr.delP99...)},
		{Part: "cni", Metric: metric("ADD p50, shipped conflist (+ portmap)"), Unit: "ms", Calyx: Of(sf.addP50...), RefName: refName, Ref: Of(sr.addP50...)},
		{Part: "cni", Metric: metric("DEL p50, shipped conflist (+ portmap)"), Unit: "ms", Calyx: Of(sf.delP50...), RefName: refName, Ref: Of(sr.delP50...)},
		{Part: "cni", Metric: metric("ADD p50, calyx-ipam as a binary (no agent socket)"), Unit: "ms", Calyx: Of(sb.addP50...), RefName: refName, Ref: Of(sr.addP50...)},
		{Part: "cni", Metric: metric("ADD p99, calyx-ipam as a binary (no agent socket)"), Unit: "ms", Calyx: Of(sb.addP99...), RefName: refName, Ref: Of(sr.addP99...)},
	}, nil
}
