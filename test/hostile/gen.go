// Package hostile feeds the real calyx and calyx-ipam binaries malformed
// and hostile CNI input, as a broken or compromised runtime could, and
// checks that each is refused with a CNI error and leaves nothing behind.
package hostile

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
)

// Input is one plugin invocation: the binary, its environment (the CNI_*
// variables) and its stdin.
type Input struct {
	ID     int
	Binary string // "calyx" or "calyx-ipam"
	Kind   string // which malformation, for the summary
	Codes  []uint // the error codes that fit it
	What   string // the malformation in a few words, for failures
	Env    map[string]string
	Stdin  []byte
}

// Base is what every input starts from: a netconf and an environment that
// an ADD succeeds with (the test proves it), so that the one thing the
// generator breaks is why the input is refused.
type Base struct {
	// Netconf is the calyx entry of the shipped conflist with the test's
	// paths, cniVersion and name, as libcni hands it to the plugin.
	Netconf map[string]any
	Env     map[string]string
	// NotNetNS are paths that exist but are no network namespace.
	NotNetNS []string
}

// Kinds of malformation, each with its generator. Every generated input
// must be refused whatever the random choices: a case that a correct
// plugin could accept does not belong here.
// codes are the spec's codes that fit the malformation: 6 for what does
// not decode, 7 for a config that decodes but is wrong, 4 for the
// environment, 1 for versions.
var kinds = []struct {
	name  string
	gen   func(g *gen, in *Input)
	codes []uint
}{
	{"truncated-json", (*gen).truncated, []uint{6}},
	{"wrong-type", (*gen).wrongType, []uint{6, 7}},
	{"huge-value", (*gen).huge, []uint{6, 7}},
	{"deep-nesting", (*gen).deep, []uint{6}},
	{"bad-cidr", (*gen).badCIDR, []uint{6, 7}},
	{"cni-version", (*gen).version, []uint{1, 6}},
	{"missing-field", (*gen).missing, []uint{1, 4, 7}},
	{"hostile-cni-args", (*gen).hostileArgs, []uint{4}},
	{"nul-byte", (*gen).nul, []uint{1, 6, 7}},
	{"over-long", (*gen).overLong, []uint{4, 7}},
	{"bad-command", (*gen).badCommand, []uint{4}},
	{"bad-netns", (*gen).badNetNS, []uint{4}},
	{"bad-ifname", (*gen).badIfName, []uint{4}},
	{"bad-containerid", (*gen).badContainerID, []uint{4}},
}

type gen struct {
	r    *rand.Rand
	base Base
	bin  string
	conf map[string]any // a deep copy of base.Netconf for this input
}

// Generate makes n inputs from seed: the same seed, the same inputs.
func Generate(seed uint64, n int, base Base) []Input {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([]Input, 0, n)
	for i := range n {
		k := kinds[i%len(kinds)]
		g := &gen{r: r, base: base, bin: []string{"calyx", "calyx-ipam"}[(i/len(kinds))%2]}
		// Only the calyx plugin opens the pod's netns; calyx-ipam never
		// looks at it, so a bad one is no fault of an IPAM call.
		if k.name == "bad-netns" {
			g.bin = "calyx"
		}
		g.conf = clone(base.Netconf)
		in := Input{ID: i, Binary: g.bin, Kind: k.name, Codes: k.codes, Env: maps.Clone(base.Env)}
		in.Env["CNI_CONTAINERID"] = fmt.Sprintf("hostile%04d", i)
		k.gen(g, &in)
		if in.Stdin == nil {
			in.Stdin = mustJSON(g.conf)
		}
		out = append(out, in)
	}
	return out
}

func (g *gen) pick(s ...string) string { return s[g.r.IntN(len(s))] }

// calyxOnly are fields only the calyx plugin decodes; calyx-ipam ignores
// them, so breaking them proves nothing about it.
var calyxOnly = []string{"mtu", "state_dir", "veth_prefix"}

// fields are the paths the generator may break, for this binary.
func (g *gen) fields() []string {
	f := []string{"cniVersion", "name", "ipam", "ipam.kubeconfig", "ipam.timeout", "ipam.lock_timeout",
		"ipam.pools", "ipam.max_blocks_per_node", "ipam.nodename_file", "prevResult", "dns"}
	if g.bin == "calyx" {
		f = append(f, calyxOnly...)
		f = append(f, "ipam.type")
	}
	return f
}

// set writes v at a dotted path of the netconf.
func (g *gen) set(path string, v any) {
	m := g.conf
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		m = m[p].(map[string]any)
	}
	m[parts[len(parts)-1]] = v
}

func (g *gen) del(path string) {
	m := g.conf
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		m = m[p].(map[string]any)
	}
	delete(m, parts[len(parts)-1])
}

func (g *gen) truncated(in *Input) {
	b := mustJSON(g.conf)
	// Anything short of the closing brace is not a JSON object.
	n := g.r.IntN(len(b) - 1)
	in.Stdin = b[:n]
	in.What = fmt.Sprintf("netconf cut to %d of %d bytes", n, len(b))
	if g.r.IntN(4) == 0 {
		in.Env["CNI_COMMAND"] = g.pick("DEL", "CHECK", "STATUS", "GC")
		in.What += ", " + in.Env["CNI_COMMAND"]
	}
}

func (g *gen) wrongType(in *Input) {
	f := g.pick(g.fields()...)
	// Values of a type the field cannot take: objects for strings and
	// numbers, strings for numbers and objects, and so on.
	var v any
	switch f {
	case "ipam":
		// {} is an ipam without its kubeconfig: refused too.
		v = []any{g.pick("1", "x"), map[string]any{}, 3, true}[g.r.IntN(4)]
	case "prevResult", "dns":
		v = []any{g.pick("1", "x"), []any{}, 3, true}[g.r.IntN(4)]
	case "ipam.pools":
		v = []any{"192.168.0.0/16", 5, map[string]any{"cidr": "10.0.0.0/8"}, []any{1, 2}}[g.r.IntN(4)]
	case "mtu", "ipam.max_blocks_per_node":
		v = []any{"1500", true, []any{1500}, map[string]any{"v": 1}, 1.5}[g.r.IntN(5)]
	default: // strings
		v = []any{42, true, []any{"x"}, map[string]any{"a": "b"}, 1e100}[g.r.IntN(5)]
	}
	g.set(f, v)
	in.What = fmt.Sprintf("%s = %s", f, mustJSON(v))
}

func (g *gen) huge(in *Input) {
	// A network name of any length is valid (calyx-ipam hashes long
	// handles), so it is not among these.
	switch g.r.IntN(6) {
	case 0:
		if g.bin == "calyx" {
			v := []any{1 << 40, -1, 1e300, 65536, 67, -9223372036854775808}[g.r.IntN(6)]
			g.set("mtu", v)
			in.What = fmt.Sprintf("mtu = %v", v)
			return
		}
		v := []any{1 << 40, -1, 1e300, 65537, -9223372036854775808}[g.r.IntN(5)]
		g.set("ipam.max_blocks_per_node", v)
		in.What = fmt.Sprintf("ipam.max_blocks_per_node = %v", v)
	case 1:
		v := []any{1 << 31, 1 << 62, 1e19, -5, 65537}[g.r.IntN(5)]
		g.set("ipam.max_blocks_per_node", v)
		in.What = fmt.Sprintf("ipam.max_blocks_per_node = %v", v)
	case 2:
		v := g.pick("1000000h", "9223372036854775807ns", "11m", "-1s", "0s", "1e9h", "10", "forever")
		f := g.pick("ipam.timeout", "ipam.lock_timeout")
		g.set(f, v)
		in.What = fmt.Sprintf("%s = %q", f, v)
	case 3:
		n := 1 << (10 + g.r.IntN(8)) // up to 128 KiB
		g.set("ipam.pools", []any{strings.Repeat("9", n)})
		in.What = fmt.Sprintf("ipam.pools holds a %d-byte name", n)
	case 4:
		n := 1 + g.r.IntN(1000)
		g.set("ipam.pools", slices.Repeat([]any{""}, n))
		in.What = fmt.Sprintf("ipam.pools holds empty names (%d)", n)
	case 5:
		// A number no 64-bit integer holds.
		in.Stdin = []byte(strings.Replace(string(mustJSON(g.conf)), `"ipam":{`, `"ipam":{"max_blocks_per_node":`+strings.Repeat("9", 400)+`,`, 1))
		in.What = "ipam.max_blocks_per_node is a 400-digit number"
	}
}

func (g *gen) deep(in *Input) {
	depth := []int{10001, 20000, 100000}[g.r.IntN(3)]
	open, closing := "[", "]"
	if g.r.IntN(2) == 0 {
		open, closing = `{"a":`, "}"
	}
	nested := strings.Repeat(open, depth) + "1" + strings.Repeat(closing, depth)
	// Deeper than the 10000 levels encoding/json accepts, in a field
	// every decoder of the netconf reads.
	f := g.pick("ipam", "prevResult", "ipam.pools", "dns")
	placeholder := `"@@NESTED@@"`
	g.set(f, "@@NESTED@@")
	in.Stdin = []byte(strings.Replace(string(mustJSON(g.conf)), placeholder, nested, 1))
	in.What = fmt.Sprintf("%s nested %d deep", f, depth)
}

func (g *gen) badCIDR(in *Input) {
	bad := g.pick("192.168.0.0/33", "300.1.2.3/24", "10.0.0.0/-1", "::/0", "fe80::/10", "192.168.0.0/16/16",
		"192.168.0.0/0x10", "0.0.0.0/0", "10.99.0.0/16", "192.168.0.0 /16", "192.168.1.1/32", "")
	if g.bin == "calyx" && g.r.IntN(2) == 0 {
		// A prevResult whose addresses are no addresses.
		g.set("prevResult", map[string]any{
			"cniVersion": "1.1.0",
			"ips":        []any{map[string]any{"address": bad, "gateway": "1.2.3.4.5"}},
		})
		in.What = fmt.Sprintf("prevResult address %q, gateway 1.2.3.4.5", bad)
		return
	}
	// No IPPool has this CIDR or name: nothing may be allocated from it.
	g.set("ipam.pools", []any{bad})
	in.What = fmt.Sprintf("ipam.pools = [%q]", bad)
}

func (g *gen) version(in *Input) {
	var v any = g.pick("0.1.0", "0.2.0", "0.3.0", "0.0.0", "1.2.0", "2.0.0", "99.99.99", "1.1", "v1.0.0",
		"1.1.0-rc1", "latest", " 1.0.0", "1.0.0\n", "")
	if g.r.IntN(8) == 0 {
		v = 1.1
	}
	g.set("cniVersion", v)
	in.What = fmt.Sprintf("cniVersion = %s", mustJSON(v))
	if g.r.IntN(3) == 0 {
		in.Env["CNI_COMMAND"] = g.pick("DEL", "CHECK", "STATUS", "GC")
		in.What += ", " + in.Env["CNI_COMMAND"]
	}
}

func (g *gen) missing(in *Input) {
	f := []string{"name", "ipam", "ipam.kubeconfig", "cniVersion"}
	if g.bin == "calyx" {
		f = append(f, "ipam.type")
	}
	env := []string{"CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"}
	if g.bin == "calyx" {
		env = append(env, "CNI_NETNS")
	}
	if g.r.IntN(3) == 0 {
		e := g.pick(env...)
		delete(in.Env, e)
		in.What = "no " + e
		return
	}
	p := g.pick(f...)
	g.del(p)
	in.What = "no " + p
}

func (g *gen) hostileArgs(in *Input) {
	long := strings.Repeat("a", 254+g.r.IntN(4096))
	args := g.pick(
		"K8S_POD_NAME=../../x;IgnoreUnknown=1",
		"IgnoreUnknown=1;K8S_POD_NAMESPACE=../../etc;K8S_POD_NAME=x",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=$(reboot)",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=`id`",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME="+long,
		"K8S_POD_NAMESPACE="+strings.Repeat("n", 64)+";K8S_POD_NAME=x",
		"IgnoreUnknown=1;garbage-without-equals",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=a b",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=UPPER",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=-x",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=x;"+strings.Repeat("A=B;", 17<<10),
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=%2e%2e%2fx",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=x\n",
		"K8S_POD_NAMESPACE=déf;K8S_POD_NAME=x",
		"K8S_POD_NAMESPACE=;K8S_POD_NAME=x",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=x=y",
		";;;garbage;;;",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=x/../../y",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=x;K8S_POD_NAME=..",
	)
	in.Env["CNI_ARGS"] = args
	in.What = fmt.Sprintf("CNI_ARGS %.80q", args)
}

func (g *gen) nul(in *Input) {
	switch g.r.IntN(3) {
	case 0:
		// A raw NUL is never JSON, inside a string or between tokens.
		b := mustJSON(g.conf)
		i := g.r.IntN(len(b) + 1)
		in.Stdin = slices.Concat(b[:i], []byte{0}, b[i:])
		in.What = fmt.Sprintf("raw NUL at byte %d", i)
	case 1:
		f := g.pick("name", "cniVersion")
		if g.bin == "calyx" {
			f = g.pick("name", "cniVersion", "veth_prefix")
		}
		v := "ca\x00li"
		if f == "veth_prefix" {
			v = "c\x00" // short enough for the length check
		}
		g.set(f, v)
		in.What = fmt.Sprintf("%s holds an escaped NUL", f)
	case 2:
		in.Stdin = slices.Concat([]byte{0, 0, 0, 0}, mustJSON(g.conf))
		in.What = "NULs before the netconf"
	}
}

func (g *gen) overLong(in *Input) {
	switch g.r.IntN(4) {
	case 0:
		n := 16 + g.r.IntN(100)
		in.Env["CNI_IFNAME"] = strings.Repeat("e", n)
		in.What = fmt.Sprintf("CNI_IFNAME of %d characters", n)
	case 1:
		if g.bin == "calyx" {
			n := 5 + g.r.IntN(300)
			g.set("veth_prefix", strings.Repeat("c", n))
			in.What = fmt.Sprintf("veth_prefix of %d characters", n)
			return
		}
		fallthrough
	case 2:
		n := 254 + g.r.IntN(8192)
		g.set("ipam.pools", []any{strings.Repeat("p", n)})
		in.What = fmt.Sprintf("ipam.pools name of %d characters", n)
	case 3:
		n := 300 + g.r.IntN(60<<10)
		in.Env["CNI_ARGS"] = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + strings.Repeat("p", n)
		in.What = fmt.Sprintf("K8S_POD_NAME of %d characters", n)
	}
}

func (g *gen) badCommand(in *Input) {
	// An empty or unset CNI_COMMAND is not here: skel answers it, by
	// design, with the plugin's "about" text and exit code 0.
	c := g.pick("add", "Add", "ADD ", " ADD", "ADD\n", "DESTROY", "ADD;DEL", "../../bin/sh", "VERSIONS",
		"DELETE", strings.Repeat("A", 4096), "ADD\tDEL", "null", "0")
	in.Env["CNI_COMMAND"] = c
	in.What = fmt.Sprintf("CNI_COMMAND %.40q", c)
}

func (g *gen) badNetNS(in *Input) {
	// Only paths that are no network namespace, or the plugin's own: never
	// one that names another real namespace, which a correct plugin would
	// wire.
	p := g.pick(append(slices.Clone(g.base.NotNetNS),
		"/proc/self/ns/mnt", "/proc/self/ns/uts", "/proc/self/ns/ipc", "/proc/self/ns/pid",
		"/proc/self/ns/net", "/dev/null", "/", "/nonexistent/netns", "relative/netns", "/proc/self/fd/0",
		"/var/run/netns/", "/var/run/netns/../netns/..")...)
	in.Env["CNI_NETNS"] = p
	in.What = "CNI_NETNS " + p
}

func (g *gen) badIfName(in *Input) {
	n := g.pick("eth0/../x", "../../x", strings.Repeat("x", 20), ".", "..", "eth 0", "eth0:1", "eth0\t", "lo", "e/", " ", "eth0\n")
	in.Env["CNI_IFNAME"] = n
	in.What = fmt.Sprintf("CNI_IFNAME %q", n)
	if g.bin == "calyx-ipam" && n == "lo" {
		// lo is taken only where the plugin looks at the pod's netns.
		in.Env["CNI_IFNAME"] = "eth0/../x"
		in.What = `CNI_IFNAME "eth0/../x"`
	}
}

func (g *gen) badContainerID(in *Input) {
	id := g.pick("../../x", "-x", ".x", "a;b", "a b", "a/b", "x\n", "$(id)", "é", "_x")
	in.Env["CNI_CONTAINERID"] = id
	in.What = fmt.Sprintf("CNI_CONTAINERID %q", id)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func clone(m map[string]any) map[string]any {
	var out map[string]any
	if err := json.Unmarshal(mustJSON(m), &out); err != nil {
		panic(err)
	}
	return out
}
