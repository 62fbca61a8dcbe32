package hostile

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/deploy"
	ipamplugin "github.com/calyx-net/calyx/ipam/plugin"
	"github.com/calyx-net/calyx/ipam/plugin/plugintest"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

var verbose = flag.Bool("hostile.each", false, "log every input and the code it got")

// inputs is how many malformed invocations the test makes (the issue's
// acceptance: 500); seed fixes which.
const (
	inputs = 500
	seed   = 11
)

// specCodes are the error codes the CNI spec (1.1.0, "Error") defines,
// and the plugin codes calyx-ipam documents (ipam/plugin). The library's
// 8 (invalid netns) and 999 (internal) are in neither: a runtime cannot
// act on them.
var specCodes = map[uint]string{
	1:                           "incompatible CNI version",
	2:                           "unsupported field",
	3:                           "container unknown",
	4:                           "invalid environment variables",
	5:                           "I/O failure",
	6:                           "failed to decode content",
	7:                           "invalid network config",
	11:                          "try again later",
	50:                          "plugin not available",
	ipamplugin.ErrNoFreeAddress: "calyx-ipam: no free address",
	ipamplugin.ErrCheckFailed:   "calyx-ipam: CHECK failed",
}

// cniError is the CNI error object; unknown fields are refused.
type cniError struct {
	CNIVersion string `json:"cniVersion,omitempty"`
	Code       *uint  `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

// The real plugin binaries, run as a runtime runs them (environment and
// stdin, in the node's network namespace) against a real kube-apiserver
// with a pool, refuse every one of 500 generated malformed inputs with a
// CNI error of the spec, never panic, and leave no address, handle, link
// or file behind.
func TestMalformedInput(t *testing.T) { malformedInput(t, false) }

// TestMalformedInputThroughAgent is TestMalformedInput with the agent's
// IPAM socket serving calyx-ipam, where the plugin wires the pod while
// the agent allocates: every refusal must still be the input's own,
// however the four concurrent callers interleave.
func TestMalformedInputThroughAgent(t *testing.T) { malformedInput(t, true) }

func malformedInput(t *testing.T, throughAgent bool) {
	start := time.Now()
	bin := build(t)
	cp := cptest.Start(t)
	cs, err := versioned.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cs.CalyxV1alpha1().IPPools().Create(ctx, &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "default-ipv4-ippool"},
		Spec:       v1alpha1.IPPoolSpec{CIDR: "192.168.0.0/16", BlockSize: 26, IPIPMode: v1alpha1.IPIPModeAlways},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the IPPool: %v", err)
	}

	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	lockDir := filepath.Join(dir, "lock")
	for _, d := range []string{stateDir, lockDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(stateDir, "nodename"), "hostile-node\n")
	writeFile(t, filepath.Join(stateDir, "mtu"), "1430\n")
	regular := filepath.Join(dir, "regular-file")
	writeFile(t, regular, "not a namespace\n")
	// Opening a FIFO blocks until a writer comes: the plugin must not.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "mnt-ns-link")
	if err := os.Symlink("/proc/self/ns/mnt", link); err != nil {
		t.Fatal(err)
	}

	node := newNetNS(t, "node")
	pod := newNetNS(t, "pod")
	setupNode(t, node)
	cptest.ForwardInto(t, node.Path(), cp.URL)
	wantStateFiles := listDir(t, stateDir)
	baseLinks := links(t, node)

	conf := netconf(t, cp.Kubeconfig, stateDir, filepath.Join(lockDir, "ipam.lock"))
	var agent *plugintest.Server
	if throughAgent {
		agent = plugintest.Start(t, cp.Config)
		conf["ipam"].(map[string]any)["agent_socket"] = agent.Path
	}
	base := Base{
		Netconf: conf,
		Env: map[string]string{
			"CNI_COMMAND":     "ADD",
			"CNI_CONTAINERID": "control",
			"CNI_NETNS":       pod.Path(),
			"CNI_IFNAME":      "eth0",
			"CNI_PATH":        bin,
			"CNI_ARGS":        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=hostile-control",
		},
		NotNetNS: []string{regular, dir, link, fifo},
	}

	// The control: the unbroken input is accepted by both binaries, so
	// that every refusal below is the malformation's doing.
	for _, b := range []string{"calyx", "calyx-ipam"} {
		in := Input{Binary: b, Kind: "control", Env: maps.Clone(base.Env), Stdin: mustJSON(base.Netconf)}
		in.Env["CNI_CONTAINERID"] = "control-" + b
		res := run(node, bin, in)
		if res.exit != 0 {
			t.Fatalf("the unbroken ADD through %s fails (exit %d): the generator's base is wrong or the setup broke\nstdout: %s\nstderr: %s", b, res.exit, res.stdout, res.stderr)
		}
		in.Env["CNI_COMMAND"] = "DEL"
		if res := run(node, bin, in); res.exit != 0 {
			t.Fatalf("DEL of the control ADD through %s fails (exit %d)\nstdout: %s\nstderr: %s", b, res.exit, res.stdout, res.stderr)
		}
	}
	assertNothingAllocated(t, cs)

	gen := Generate(seed, inputs, base)
	results := make([]result, len(gen))
	work := make(chan int)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := range work {
				results[i] = run(node, bin, gen[i])
			}
		})
	}
	runStart := time.Now()
	for i := range gen {
		work <- i
	}
	close(work)
	wg.Wait()
	runTime := time.Since(runStart)

	byCode := map[uint]int{}
	byKind := map[string]map[uint]int{}
	for i, in := range gen {
		res := results[i]
		code, problem := judge(res, requestedVersion(in.Stdin))
		if problem != "" {
			t.Errorf("input %d (%s via %s: %s): %s\nstdout: %.600s\nstderr: %.600s",
				in.ID, in.Kind, in.Binary, in.What, problem, res.stdout, res.stderr)
			continue
		}
		if !slices.Contains(in.Codes, code) {
			t.Errorf("input %d (%s via %s: %s): code %d (%s), want one of %v\nstdout: %.600s",
				in.ID, in.Kind, in.Binary, in.What, code, specCodes[code], in.Codes, res.stdout)
		}
		if *verbose {
			t.Logf("input %d %s via %s: %s: code %d: %.200s", in.ID, in.Kind, in.Binary, in.What, code, msgOf(res.stdout))
		}
		byCode[code]++
		if byKind[in.Kind] == nil {
			byKind[in.Kind] = map[uint]int{}
		}
		byKind[in.Kind][code]++
	}
	summary(t, byCode, byKind)

	if agent != nil && agent.Answered("ADD") == 0 {
		t.Errorf("the agent's socket answered no ADD: the inputs did not take the path this test is for")
	}
	assertNothingAllocated(t, cs)
	if diff := cmp.Diff(baseLinks, links(t, node)); diff != "" {
		t.Errorf("links of the node's namespace changed (-before +after):\n%s", diff)
	}
	if got := links(t, pod); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("the pod's namespace holds %v after refused ADDs, want only lo", got)
	}
	if diff := cmp.Diff(wantStateFiles, listDir(t, stateDir)); diff != "" {
		t.Errorf("files in state_dir changed (-before +after):\n%s", diff)
	}
	if got := listDir(t, lockDir); len(got) > 1 || (len(got) == 1 && got[0] != "ipam.lock") {
		t.Errorf("the IPAM lock dir holds %v, want at most ipam.lock", got)
	}
	t.Logf("%d inputs in %v (%.1f/s); whole test %v", len(gen), runTime.Round(time.Millisecond),
		float64(len(gen))/runTime.Seconds(), time.Since(start).Round(time.Millisecond))
}

type result struct {
	exit           int
	stdout, stderr []byte
	err            error
}

// run executes one input as a runtime does: a clean environment, the
// netconf on stdin, in the node's network namespace.
func run(node ns.NetNS, bin string, in Input) result {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var res result
	err := node.Do(func(ns.NetNS) error {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, in.Binary))
		cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		for _, k := range slices.Sorted(maps.Keys(in.Env)) {
			cmd.Env = append(cmd.Env, k+"="+in.Env[k])
		}
		cmd.Stdin = bytes.NewReader(in.Stdin)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		res.stdout, res.stderr = stdout.Bytes(), stderr.Bytes()
		var exit *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &exit):
			res.exit = exit.ExitCode()
			if !exit.Exited() {
				res.err = fmt.Errorf("killed: %v", exit)
			}
		default:
			res.err = err
		}
		return nil
	})
	if err != nil {
		res.err = err
	}
	if ctx.Err() != nil {
		res.err = fmt.Errorf("the plugin did not answer within 60s")
	}
	return res
}

// judge returns the error code of a refusal, or what is wrong with it.
// versions are the CNI versions both plugins speak.
var versions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

func judge(res result, requested string) (uint, string) {
	if res.err != nil {
		return 0, res.err.Error()
	}
	if res.exit == 0 {
		return 0, "accepted (exit code 0), want a refusal"
	}
	if bytes.Contains(res.stderr, []byte("panic:")) || bytes.Contains(res.stderr, []byte("goroutine ")) {
		return 0, "panicked"
	}
	var e cniError
	dec := json.NewDecoder(bytes.NewReader(res.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return 0, fmt.Sprintf("stdout is not a CNI error object: %v", err)
	}
	if dec.More() {
		return 0, "stdout holds more than the error object"
	}
	switch {
	case e.Code == nil:
		return 0, "the error has no code"
	case e.Msg == "":
		return 0, "the error has no msg"
	case !slices.Contains(versions, e.CNIVersion):
		return 0, fmt.Sprintf("the error's cniVersion %q is none the plugins speak (%v)", e.CNIVersion, versions)
	case slices.Contains(versions, requested) && e.CNIVersion != requested:
		return 0, fmt.Sprintf("the error's cniVersion %q is not the request's %q", e.CNIVersion, requested)
	}
	if _, ok := specCodes[*e.Code]; !ok {
		return *e.Code, fmt.Sprintf("error code %d is neither the spec's nor a documented calyx one", *e.Code)
	}
	return *e.Code, ""
}

func summary(t *testing.T, byCode map[uint]int, byKind map[string]map[uint]int) {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CODE\tMEANING\tINPUTS")
	for _, c := range slices.Sorted(maps.Keys(byCode)) {
		fmt.Fprintf(w, "%d\t%s\t%d\n", c, specCodes[c], byCode[c])
	}
	fmt.Fprintln(w, "\nKIND\tCODES (code×inputs)")
	for _, k := range slices.Sorted(maps.Keys(byKind)) {
		var parts []string
		for _, c := range slices.Sorted(maps.Keys(byKind[k])) {
			parts = append(parts, fmt.Sprintf("%d×%d", c, byKind[k][c]))
		}
		fmt.Fprintf(w, "%s\t%s\n", k, strings.Join(parts, " "))
	}
	w.Flush()
	t.Logf("refusals by code:\n%s", b.String())
}

// assertNothingAllocated: no address of any block is held and no handle
// exists. Blocks themselves may have been claimed by an ADD that got as
// far as the allocator; an empty block is no leak.
func assertNothingAllocated(t *testing.T, cs versioned.Interface) {
	t.Helper()
	ctx := context.Background()
	blocks, err := cs.CalyxV1alpha1().IPAMBlocks().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing IPAMBlocks: %v", err)
	}
	for _, b := range blocks.Items {
		for _, a := range b.Spec.Allocations {
			t.Errorf("block %s holds ordinal %d for %+v", b.Name, a.Ordinal, a)
		}
	}
	handles, err := cs.CalyxV1alpha1().IPAMHandles().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing IPAMHandles: %v", err)
	}
	for _, h := range handles.Items {
		t.Errorf("IPAMHandle %s is left", h.Name)
	}
}

// netconf is the calyx entry of the shipped conflist as libcni hands it
// to the plugin (cniVersion and name of the list), with this test's paths.
func netconf(t *testing.T, kubeconfig, stateDir, lockFile string) map[string]any {
	t.Helper()
	entry, err := deploy.CalyxEntry()
	if err != nil {
		t.Fatal(err)
	}
	var calyx map[string]any
	if err := json.Unmarshal(entry, &calyx); err != nil {
		t.Fatal(err)
	}
	calyx["state_dir"] = stateDir
	ipam := calyx["ipam"].(map[string]any)
	ipam["kubeconfig"] = kubeconfig
	ipam["nodename_file"] = filepath.Join(stateDir, "nodename")
	ipam["lock_file"] = lockFile
	// The agent's socket, where the conflist names one, is not running
	// here unless the test starts one: the plugin takes its fallback, the
	// API server.
	return calyx
}

func build(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the test builds the plugins and needs the go command in PATH: %v", err)
	}
	cmd := exec.Command(goBin, "build", "-o", dir+"/",
		"github.com/calyx-net/calyx/cmd/calyx", "github.com/calyx-net/calyx/cmd/calyx-ipam")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building calyx and calyx-ipam: %v\n%s", err, out)
	}
	return dir
}

func newNetNS(t *testing.T, role string) ns.NetNS {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "calyxhostile-" + role + "-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s (the test needs root)", name, err, out)
	}
	n, err := ns.GetNS(filepath.Join("/var/run/netns", name))
	if err != nil {
		t.Fatalf("opening netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		n.Close()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	return n
}

// setupNode gives the node namespace what a node has: lo up, a NIC with an
// address and a default route (a veth pair stands in for the NIC).
func setupNode(t *testing.T, node ns.NetNS) {
	t.Helper()
	err := node.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0", Flags: net.FlagUp}, PeerName: "uplink0peer"}
		if err := netlink.LinkAdd(up); err != nil {
			return fmt.Errorf("adding uplink0: %w", err)
		}
		peer, err := netlink.LinkByName("uplink0peer")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			return err
		}
		if err := netlink.AddrAdd(up, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 99, 0, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Gw: net.IPv4(10, 99, 0, 254)})
	})
	if err != nil {
		t.Fatalf("setting up the node's namespace: %v", err)
	}
}

func links(t *testing.T, n ns.NetNS) []string {
	t.Helper()
	var names []string
	err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkList()
		for _, x := range l {
			names = append(names, x.Attrs().Name)
		}
		return err
	})
	if err != nil {
		t.Fatalf("listing links: %v", err)
	}
	slices.Sort(names)
	return names
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// requestedVersion is the cniVersion of a netconf, "" if it has none
// readable.
func requestedVersion(stdin []byte) string {
	var c struct {
		CNIVersion string `json:"cniVersion"`
	}
	json.Unmarshal(stdin, &c)
	return c.CNIVersion
}

func msgOf(stdout []byte) string {
	var e cniError
	json.Unmarshal(stdout, &e)
	return e.Msg
}

// The generator is deterministic (a failure names an input that the next
// run makes again) and covers every kind through both binaries.
func TestGenerate(t *testing.T) {
	base := Base{
		Netconf: map[string]any{"cniVersion": "1.1.0", "name": "n", "type": "calyx", "ipam": map[string]any{"type": "calyx-ipam", "kubeconfig": "/k"}},
		Env:     map[string]string{"CNI_COMMAND": "ADD", "CNI_NETNS": "/n", "CNI_IFNAME": "eth0", "CNI_PATH": "/p", "CNI_ARGS": ""},
	}
	a, b := Generate(seed, inputs, base), Generate(seed, inputs, base)
	if diff := cmp.Diff(a, b); diff != "" {
		t.Fatalf("two runs with seed %d differ:\n%s", seed, diff)
	}
	seen := map[string]bool{}
	for _, in := range a {
		seen[in.Kind+" via "+in.Binary] = true
	}
	for _, k := range kinds {
		for _, bin := range []string{"calyx", "calyx-ipam"} {
			if !seen[k.name+" via "+bin] && !(k.name == "bad-netns" && bin == "calyx-ipam") {
				t.Errorf("no %s input via %s", k.name, bin)
			}
		}
	}
}
