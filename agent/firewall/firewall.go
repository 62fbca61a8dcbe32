// Package firewall owns the agent's nftables table, `ip calyx`: it accepts
// forwarding to and from pods, masquerades pod traffic leaving every pool
// when the pool says natOutgoing, accepts IP-in-IP only from cluster nodes,
// and drops pod packets with a source that is not the pod's own address.
//
// The rules are fixed; what changes with the cluster is the content of
// three sets, which Reconcile updates in place. Rules carry a comment that
// names them and a hash of their expressions, so that a deleted or altered
// rule (or a new agent version's rule) is noticed and its chain rewritten.
package firewall

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/desired"
)

// TableName is the agent's table, in the ip family: `nft list table ip calyx`.
const TableName = "calyx"

// Set names.
const (
	SetNodeIPs   = "node-ips"
	SetPools     = "pool-cidrs"
	SetNATPools  = "nat-pool-cidrs"
	podIfaceGlob = "cali" // iifname "cali*": a prefix compare
)

// Rule names, the start of each rule's comment.
const (
	RuleAntiSpoof  = "drop pod packets whose source is not the pod's address"
	RuleFromPods   = "accept forwarding from pods"
	RuleToPods     = "accept forwarding to pods"
	RuleIPIPNodes  = "accept IPIP from cluster nodes"
	RuleIPIPOthers = "drop IPIP from anyone else"
	RuleNATOut     = "masquerade pod traffic leaving all pools"
	// RuleHelper starts the name of each conntrack helper rule.
	RuleHelper = "conntrack helper"
)

// Chains that attach conntrack helpers: one for packets from pods and
// other hosts, one for the node's own.
const (
	ChainHelpersPrerouting = "helpers-prerouting"
	ChainHelpersOutput     = "helpers-output"
)

// Firewall reconciles the table in one network namespace.
type Firewall struct {
	nsFD int // 0: the current namespace

	// mu serializes Reconciles on w, the lasting connection they read
	// and commit through (opened on first use, dropped after a failure);
	// port is w's netlink port, which nftables names in its report of
	// every commit made through w (Committed).
	mu   sync.Mutex
	w    *nftables.Conn
	port atomic.Uint32
}

// New is a Firewall for the namespace whose file descriptor is nsFD (0 for
// the agent's own).
func New(nsFD int) *Firewall { return &Firewall{nsFD: nsFD} }

// Conn opens a netlink connection in the firewall's namespace.
func (f *Firewall) Conn() (*nftables.Conn, error) { return f.open() }

// open opens a connection with opts in the firewall's namespace.
func (f *Firewall) open(opts ...nftables.ConnOption) (*nftables.Conn, error) {
	if f.nsFD > 0 {
		opts = append(opts, nftables.WithNetNSFd(f.nsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening nftables netlink: %w", err)
	}
	return c, nil
}

// WatchConn opens a connection for an nftables monitor. Its receive buffer
// holds 4 MB: one commit that fills a set of thousands of nodes reports
// every element, and a smaller buffer overflows, which ends the monitor.
func (f *Firewall) WatchConn() (*nftables.Conn, error) {
	return f.open(nftables.WithSockOptions(func(c *netlink.Conn) error {
		if err := setBuffer(c, unix.SO_RCVBUFFORCE, 4<<20); err != nil {
			return fmt.Errorf("enlarging the nftables monitor's receive buffer: %w", err)
		}
		return nil
	}))
}

// Committed reports whether h, the header of nftables' report of a new
// generation (NFT_MSG_NEWGEN, which carries the committing socket's port),
// reports a commit of Reconcile's: a watcher of the table need not answer
// the agent's own changes with another reconcile.
func (f *Firewall) Committed(h netlink.Header) bool {
	p := f.port.Load()
	return p != 0 && h.PID == p
}

// Close closes Reconcile's connection, if one is open.
func (f *Firewall) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropWriter()
}

// writer is Reconcile's lasting connection, opened when there is none.
func (f *Firewall) writer() (*nftables.Conn, error) {
	if f.w != nil {
		return f.w, nil
	}
	var port uint32
	c, err := f.open(nftables.AsLasting(), nftables.WithSockOptions(func(c *netlink.Conn) (err error) {
		// A commit is one sendmsg, which the kernel refuses when it is
		// larger than the socket's send buffer (212 KB by default:
		// ~10,000 node addresses).
		if err := setBuffer(c, unix.SO_SNDBUFFORCE, 8<<20); err != nil {
			return fmt.Errorf("enlarging the nftables socket's send buffer: %w", err)
		}
		port, err = portOf(c)
		return err
	}))
	if err != nil {
		return nil, err
	}
	f.w = c
	f.port.Store(port)
	return c, nil
}

func (f *Firewall) dropWriter() {
	if f.w != nil {
		f.w.CloseLasting()
		f.w = nil
		f.port.Store(0)
	}
}

// setBuffer sets one of c's socket buffer sizes (SO_SNDBUFFORCE or
// SO_RCVBUFFORCE: the agent has CAP_NET_ADMIN, and net.core.*mem_max
// would cap the unforced options).
func setBuffer(c *netlink.Conn, opt, bytes int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, bytes) }); err != nil {
		return err
	}
	return serr
}

// portOf is the netlink port the kernel bound c's socket to.
func portOf(c *netlink.Conn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("nftables socket: %w", err)
	}
	var sa unix.Sockaddr
	var serr error
	if err := raw.Control(func(fd uintptr) { sa, serr = unix.Getsockname(int(fd)) }); err != nil {
		return 0, fmt.Errorf("nftables socket: %w", err)
	}
	nl, ok := sa.(*unix.SockaddrNetlink)
	if serr != nil || !ok {
		return 0, fmt.Errorf("the nftables socket's netlink port: %v", serr)
	}
	return nl.Pid, nil
}

// Result says what Reconcile changed.
type Result struct {
	CreatedTable   bool
	RewroteChains  []string
	UpdatedSets    []string
	AddedObjects   []string
	RemovedObjects []string
}

// Changed reports whether Reconcile changed anything.
func (r Result) Changed() bool {
	return r.CreatedTable || len(r.RewroteChains)+len(r.UpdatedSets)+len(r.AddedObjects)+len(r.RemovedObjects) > 0
}

// chainSpec is one of the table's chains with its rules.
type chainSpec struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
	rules    []ruleSpec
}

type ruleSpec struct {
	name  string
	exprs []expr.Any
}

type setSpec struct {
	name     string
	interval bool
	elems    []nftables.SetElement
}

var (
	table  = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	accept = &expr.Verdict{Kind: expr.VerdictAccept}
	drop   = &expr.Verdict{Kind: expr.VerdictDrop}
)

func ifname(key expr.MetaKey, prefix string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(prefix)},
	}
}

func ipField(offset uint32) expr.Any {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}
}

func lookup(set string, invert bool) expr.Any {
	return &expr.Lookup{SourceRegister: 1, SetName: set, Invert: invert}
}

func ipProtocolIPIP() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_IPIP}},
	}
}

func join(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

// helperPriority is where the helper chains run: after conntrack (-200)
// has made the new connection's entry, which `ct helper set` attaches the
// helper to (before it there is no entry, and the statement does nothing),
// and before kube-proxy's DNAT (-100) rewrites the ClusterIP the rules
// match. The iptables equivalent, `-j CT --helper`, works from the raw
// table because it leaves a template that conntrack then uses.
var helperPriority = nftables.ChainPriorityRef(-150)

// helperObject is the name of the table's ct helper object for h.
func helperObject(h desired.Helper) string { return h.Name + "-" + h.Protocol }

func l4proto(p string) byte {
	if p == "tcp" {
		return unix.IPPROTO_TCP
	}
	return unix.IPPROTO_UDP
}

// helperRules attach each helper to new connections to its address and
// port; a NodePort matches any of the node's own addresses.
func helperRules(hs []desired.Helper) []ruleSpec {
	var out []ruleSpec
	for _, h := range hs {
		exprs := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4proto(h.Protocol)}},
		}
		if h.Addr.IsValid() {
			exprs = append(exprs, ipField(16), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: h.Addr.AsSlice()})
		} else {
			exprs = append(exprs,
				&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)})
		}
		exprs = append(exprs,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(h.Port)},
			&expr.Counter{},
			&expr.Objref{Type: int(nftables.ObjTypeCtHelper), Name: helperObject(h)},
		)
		out = append(out, ruleSpec{name: RuleHelper + " " + h.String(), exprs: exprs})
	}
	return out
}

func chains(fw desired.Firewall) []chainSpec {
	raw := nftables.ChainPriorityRaw
	filter := nftables.ChainPriorityFilter
	srcnat := nftables.ChainPriorityNATSource
	return []chainSpec{
		{
			// At raw priority, before conntrack, like rp_filter: a spoofed
			// packet leaves no state behind.
			name: "antispoof", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookPrerouting, priority: raw,
			rules: []ruleSpec{{
				// fib saddr . iif oif missing: the source, looked up
				// restricted to the interface the packet came in on, has
				// no route back out of it. A pod's own /32 route names its
				// cali interface; any other source fails.
				name: RuleAntiSpoof,
				exprs: join(ifname(expr.MetaKeyIIFNAME, podIfaceGlob), []expr.Any{
					&expr.Fib{Register: 1, FlagSADDR: true, FlagIIF: true, ResultOIF: true},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
					&expr.Counter{}, drop,
				}),
			}},
		},
		{
			name: "forward", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookForward, priority: filter,
			rules: []ruleSpec{
				{name: RuleFromPods, exprs: join(ifname(expr.MetaKeyIIFNAME, podIfaceGlob), []expr.Any{&expr.Counter{}, accept})},
				{name: RuleToPods, exprs: join(ifname(expr.MetaKeyOIFNAME, podIfaceGlob), []expr.Any{&expr.Counter{}, accept})},
			},
		},
		{
			// The kernel's ipip device takes IPIP from anyone; the eBPF
			// datapath checks the source itself, before netfilter, and
			// these rules then see no IPIP at all.
			name: "input", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookInput, priority: filter,
			rules: []ruleSpec{
				{name: RuleIPIPNodes, exprs: join(ipProtocolIPIP(), []expr.Any{ipField(12), lookup(SetNodeIPs, false), &expr.Counter{}, accept})},
				{name: RuleIPIPOthers, exprs: join(ipProtocolIPIP(), []expr.Any{&expr.Counter{}, drop})},
			},
		},
		{
			name: "postrouting", typ: nftables.ChainTypeNAT, hook: nftables.ChainHookPostrouting, priority: srcnat,
			rules: []ruleSpec{{
				name: RuleNATOut,
				exprs: []expr.Any{
					ipField(12), lookup(SetNATPools, false),
					ipField(16), lookup(SetPools, true),
					&expr.Counter{}, &expr.Masq{},
				},
			}},
		},
		{name: ChainHelpersPrerouting, typ: nftables.ChainTypeFilter, hook: nftables.ChainHookPrerouting, priority: helperPriority, rules: helperRules(fw.Helpers)},
		{name: ChainHelpersOutput, typ: nftables.ChainTypeFilter, hook: nftables.ChainHookOutput, priority: helperPriority, rules: helperRules(fw.Helpers)},
	}
}

// helperObjects are the ct helper objects the helpers refer to.
func helperObjects(hs []desired.Helper) map[string]*nftables.NamedObj {
	out := map[string]*nftables.NamedObj{}
	for _, h := range hs {
		out[helperObject(h)] = &nftables.NamedObj{
			Table: table, Name: helperObject(h), Type: nftables.ObjTypeCtHelper,
			Obj: &expr.CtHelper{Name: h.Name, L3Proto: unix.NFPROTO_IPV4, L4Proto: l4proto(h.Protocol)},
		}
	}
	return out
}

// comment is the rule's name and a hash of its expressions: it identifies
// the rule in the kernel, so a changed definition shows as a different rule.
func comment(r ruleSpec) (string, error) {
	h := sha256.New()
	for _, e := range r.exprs {
		b, err := expr.Marshal(byte(table.Family), e)
		if err != nil {
			return "", fmt.Errorf("encoding rule %q: %w", r.name, err)
		}
		h.Write(b)
	}
	return fmt.Sprintf("calyx: %s [%s]", r.name, hex.EncodeToString(h.Sum(nil))[:8]), nil
}

func sets(fw desired.Firewall) []setSpec {
	var nodes []nftables.SetElement
	for _, a := range fw.NodeIPs {
		if a.Is4() {
			nodes = append(nodes, nftables.SetElement{Key: a.AsSlice()})
		}
	}
	return []setSpec{
		{name: SetNodeIPs, elems: nodes},
		{name: SetPools, interval: true, elems: intervals(fw.PoolCIDRs)},
		{name: SetNATPools, interval: true, elems: intervals(fw.NATPoolCIDRs)},
	}
}

// intervals are the elements of an interval set holding prefixes: each
// range's first address, and the address after its last flagged as an
// interval end. Overlapping and adjacent ranges are merged first, because
// the kernel refuses overlapping intervals.
func intervals(ps []netip.Prefix) []nftables.SetElement {
	type span struct{ lo, hi uint64 } // hi exclusive; uint64 so 2^32 fits
	var spans []span
	for _, p := range ps {
		if !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		lo := uint64(u32(p.Addr()))
		spans = append(spans, span{lo, lo + 1<<(32-p.Bits())})
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
	var merged []span
	for _, s := range spans {
		if n := len(merged); n > 0 && s.lo <= merged[n-1].hi {
			merged[n-1].hi = max(merged[n-1].hi, s.hi)
			continue
		}
		merged = append(merged, s)
	}
	var out []nftables.SetElement
	for _, s := range merged {
		out = append(out, nftables.SetElement{Key: be32(s.lo)})
		if s.hi < 1<<32 {
			out = append(out, nftables.SetElement{Key: be32(s.hi), IntervalEnd: true})
		}
	}
	return out
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func be32(v uint64) []byte { return binaryutil.BigEndian.PutUint32(uint32(v)) }

// Reconcile makes the table match: creates what is missing, rewrites a
// chain whose rules differ, updates set contents in place, and removes
// chains and sets of the table that are no longer part of it. Everything
// goes to the kernel as one transaction: each step below reads what the
// table has and queues its changes on the same connection.
func (f *Firewall) Reconcile(fw desired.Firewall) (res Result, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.writer()
	if err != nil {
		return Result{}, err
	}
	defer func() {
		if err != nil {
			// The socket may be what broke: the next try opens another.
			f.dropWriter()
		}
	}()
	tx := &transaction{c: c, fw: fw}
	if err := tx.table(); err != nil {
		return tx.res, err
	}
	// Sets first: rules refer to them. Helper objects before the rules
	// that refer to them; unused ones go at the end, after those rules.
	staleSets, err := tx.sets()
	if err != nil {
		return tx.res, err
	}
	staleObjs, err := tx.helperObjects()
	if err != nil {
		return tx.res, err
	}
	staleChains, err := tx.chains()
	if err != nil {
		return tx.res, err
	}
	tx.remove(staleChains, staleSets, staleObjs)
	if !tx.res.Changed() {
		return tx.res, nil
	}
	if err := c.Flush(); err != nil {
		return tx.res, fmt.Errorf("applying nftables table ip %s: %w (is nf_tables available in this kernel?)", TableName, err)
	}
	return tx.res, nil
}

// transaction is one Reconcile: the changes queued on c, and what they
// change.
type transaction struct {
	c   *nftables.Conn
	fw  desired.Firewall
	res Result
}

// table adds the table; when it is new there is nothing of it to read.
func (tx *transaction) table() error {
	if _, err := tx.c.ListTableOfFamily(TableName, table.Family); err != nil {
		if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("reading nftables table ip %s: %w", TableName, err)
		}
		tx.res.CreatedTable = true
	}
	tx.c.AddTable(table) // creates, or is a no-op on the existing table
	return nil
}

// sets creates the sets or updates their content in place, and returns
// the table's sets that are no longer wanted.
func (tx *transaction) sets() (stale []*nftables.Set, err error) {
	c := tx.c
	haveSets := map[string]*nftables.Set{}
	if !tx.res.CreatedTable {
		ss, err := c.GetSets(table)
		if err != nil {
			return nil, fmt.Errorf("listing the sets of table ip %s: %w", TableName, err)
		}
		for _, s := range ss {
			haveSets[s.Name] = s
		}
	}
	wantSets := map[string]bool{}
	for i, s := range sets(tx.fw) {
		wantSets[s.name] = true
		have, ok := haveSets[s.name]
		if ok && have.Interval == s.interval && have.KeyType.Name == nftables.TypeIPAddr.Name {
			if err := tx.updateSet(have, s); err != nil {
				return nil, err
			}
			continue
		}
		if ok {
			// A set of another shape under our name (an older agent):
			// the rules using it go first, with their chains below.
			for _, ch := range chains(tx.fw) {
				c.FlushChain(&nftables.Chain{Table: table, Name: ch.name})
			}
			c.DelSet(have)
			tx.res.RemovedObjects = append(tx.res.RemovedObjects, "set "+s.name)
		}
		// The ID names the set within one transaction. Choosing it here
		// keeps AddSet off the library's global counter, which it bumps
		// without a lock (agents of several nodes share a test process).
		set := &nftables.Set{Table: table, Name: s.name, ID: uint32(i + 1), KeyType: nftables.TypeIPAddr, Interval: s.interval}
		if err := c.AddSet(set, nil); err != nil {
			return nil, fmt.Errorf("creating set %s: %w", s.name, err)
		}
		if err := inChunks(set, s.elems, c.SetAddElements); err != nil {
			return nil, fmt.Errorf("filling set %s: %w", s.name, err)
		}
		tx.res.UpdatedSets = append(tx.res.UpdatedSets, s.name)
	}
	for _, name := range slices.Sorted(maps.Keys(haveSets)) {
		if !wantSets[name] {
			stale = append(stale, haveSets[name])
		}
	}
	return stale, nil
}

// updateSet brings the content of have, a set of the right shape, to
// want's.
func (tx *transaction) updateSet(have *nftables.Set, want setSpec) error {
	elems, err := tx.c.GetSetElements(have)
	if err != nil {
		return fmt.Errorf("reading set %s: %w", want.name, err)
	}
	u, changed := planSetUpdate(want.interval, elems, want.elems)
	if !changed {
		return nil
	}
	tx.res.UpdatedSets = append(tx.res.UpdatedSets, want.name)
	if u.flush {
		tx.c.FlushSet(have)
	}
	if err := inChunks(have, u.del, tx.c.SetDeleteElements); err != nil {
		return fmt.Errorf("updating set %s: %w", want.name, err)
	}
	if err := inChunks(have, u.add, tx.c.SetAddElements); err != nil {
		return fmt.Errorf("updating set %s: %w", want.name, err)
	}
	return nil
}

// setChunk is the most elements one set-element message carries. The
// library nests a message's elements in one attribute, whose length field
// has 16 bits: past ~4,000 addresses it wraps, and the kernel silently
// takes only the tail (a set of 4,500 nodes held 404). An interval
// element takes at most ~40 bytes; 1,024 of them stay well inside.
const setChunk = 1024

// inChunks queues elems for set through op (SetAddElements or
// SetDeleteElements), setChunk at a time; the messages still go to the
// kernel as one transaction.
func inChunks(set *nftables.Set, elems []nftables.SetElement, op func(*nftables.Set, []nftables.SetElement) error) error {
	for chunk := range slices.Chunk(elems, setChunk) {
		if err := op(set, chunk); err != nil {
			return err
		}
	}
	return nil
}

// setUpdate is how a set's content gets from what it has to what is
// wanted: flushed and refilled, or elements deleted and added.
type setUpdate struct {
	flush    bool
	add, del []nftables.SetElement
}

// planSetUpdate says how to change a set's elements from have to want,
// and whether they differ at all. An interval is a pair of elements;
// replacing an interval set's content as a whole, inside the transaction,
// keeps every pair intact.
func planSetUpdate(interval bool, have, want []nftables.SetElement) (setUpdate, bool) {
	if sameElements(have, want) {
		return setUpdate{}, false
	}
	if interval {
		return setUpdate{flush: true, add: want}, true
	}
	add, del := diffElements(have, want)
	return setUpdate{add: add, del: del}, true
}

// helperObjects adds the ct helper objects the helper rules refer to,
// and returns those of the table that none refers to any more.
func (tx *transaction) helperObjects() (stale []*nftables.NamedObj, err error) {
	haveObjs := map[string]*nftables.NamedObj{}
	if !tx.res.CreatedTable {
		objs, err := tx.c.GetNamedObjects(table)
		if err != nil {
			return nil, fmt.Errorf("listing the objects of table ip %s: %w", TableName, err)
		}
		for _, o := range objs {
			if no, ok := o.(*nftables.NamedObj); ok && no.Type == nftables.ObjTypeCtHelper {
				haveObjs[no.Name] = no
			}
		}
	}
	wantObjs := helperObjects(tx.fw.Helpers)
	for _, name := range slices.Sorted(maps.Keys(wantObjs)) {
		o := wantObjs[name]
		if have, ok := haveObjs[name]; ok {
			if h, ok := have.Obj.(*expr.CtHelper); ok && *h == *o.Obj.(*expr.CtHelper) {
				continue
			}
			// The kernel cannot change a helper object in place.
			return nil, fmt.Errorf("ct helper %s in table ip %s is not what calyx makes: delete the table (nft delete table ip %s) and the agent recreates it", name, TableName, TableName)
		}
		tx.c.AddObj(o)
		tx.res.AddedObjects = append(tx.res.AddedObjects, "ct helper "+name)
	}
	for _, name := range slices.Sorted(maps.Keys(haveObjs)) {
		if _, ok := wantObjs[name]; !ok {
			stale = append(stale, haveObjs[name])
		}
	}
	return stale, nil
}

// chains rewrites every chain whose rules differ from the wanted ones (by
// their comments, which carry a hash of the rule), creating it if need
// be, and returns the table's chains that are no longer wanted.
func (tx *transaction) chains() (stale []*nftables.Chain, err error) {
	c := tx.c
	haveChains := map[string]*nftables.Chain{}
	if !tx.res.CreatedTable {
		all, err := c.ListChainsOfTableFamily(table.Family)
		if err != nil {
			return nil, fmt.Errorf("listing the chains of table ip %s: %w", TableName, err)
		}
		for _, ch := range all {
			if ch.Table.Name == TableName {
				haveChains[ch.Name] = ch
			}
		}
	}
	wantChains := map[string]bool{}
	for _, spec := range chains(tx.fw) {
		wantChains[spec.name] = true
		ch := &nftables.Chain{Table: table, Name: spec.name, Type: spec.typ, Hooknum: spec.hook, Priority: spec.priority}
		var comments []string
		for _, r := range spec.rules {
			cm, err := comment(r)
			if err != nil {
				return nil, err
			}
			comments = append(comments, cm)
		}
		have, ok := haveChains[spec.name]
		if ok && sameChain(have, ch) {
			rules, err := c.GetRules(table, have)
			if err != nil {
				return nil, fmt.Errorf("listing the rules of chain %s: %w", spec.name, err)
			}
			if slices.Equal(ruleComments(rules), comments) {
				continue
			}
			c.FlushChain(have)
		} else if ok {
			c.FlushChain(have)
			c.DelChain(have)
		}
		if !ok || !sameChain(have, ch) {
			c.AddChain(ch)
		}
		for i, r := range spec.rules {
			c.AddRule(&nftables.Rule{
				Table: table, Chain: ch, Exprs: r.exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, comments[i]),
			})
		}
		tx.res.RewroteChains = append(tx.res.RewroteChains, spec.name)
	}
	for _, name := range slices.Sorted(maps.Keys(haveChains)) {
		if !wantChains[name] {
			stale = append(stale, haveChains[name])
		}
	}
	return stale, nil
}

// remove deletes what is no longer wanted: chains first (their rules
// refer to sets and helper objects), then sets, then helper objects.
func (tx *transaction) remove(chains []*nftables.Chain, sets []*nftables.Set, objs []*nftables.NamedObj) {
	for _, ch := range chains {
		tx.c.FlushChain(ch)
		tx.c.DelChain(ch)
		tx.res.RemovedObjects = append(tx.res.RemovedObjects, "chain "+ch.Name)
	}
	for _, s := range sets {
		tx.c.DelSet(s)
		tx.res.RemovedObjects = append(tx.res.RemovedObjects, "set "+s.Name)
	}
	for _, o := range objs {
		tx.c.DeleteObject(o)
		tx.res.RemovedObjects = append(tx.res.RemovedObjects, "ct helper "+o.Name)
	}
}

func sameChain(have, want *nftables.Chain) bool {
	return have.Type == want.Type &&
		have.Hooknum != nil && *have.Hooknum == *want.Hooknum &&
		have.Priority != nil && *have.Priority == *want.Priority
}

func ruleComments(rules []*nftables.Rule) []string {
	var out []string
	for _, r := range rules {
		cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		out = append(out, cm)
	}
	return out
}

type elemKey struct {
	key string
	end bool
}

func keys(es []nftables.SetElement) map[elemKey]nftables.SetElement {
	m := make(map[elemKey]nftables.SetElement, len(es))
	for _, e := range es {
		m[elemKey{string(e.Key), e.IntervalEnd}] = e
	}
	return m
}

func sameElements(have, want []nftables.SetElement) bool {
	hk, wk := keys(have), keys(want)
	if len(hk) != len(wk) {
		return false
	}
	for k := range wk {
		if _, ok := hk[k]; !ok {
			return false
		}
	}
	return true
}

func diffElements(have, want []nftables.SetElement) (add, del []nftables.SetElement) {
	hk, wk := keys(have), keys(want)
	for k, e := range wk {
		if _, ok := hk[k]; !ok {
			add = append(add, e)
		}
	}
	for k, e := range hk {
		if _, ok := wk[k]; !ok {
			del = append(del, nftables.SetElement{Key: e.Key, IntervalEnd: e.IntervalEnd})
		}
	}
	return add, del
}

// Counter is a rule's counter.
type Counter struct{ Packets, Bytes uint64 }

// Counters reads the counters of the table's rules, by rule name (the
// constants above).
func (f *Firewall) Counters() (map[string]Counter, error) {
	c, err := f.Conn()
	if err != nil {
		return nil, err
	}
	out := map[string]Counter{}
	for _, spec := range chains(desired.Firewall{}) {
		rules, err := c.GetRules(table, &nftables.Chain{Table: table, Name: spec.name})
		if err != nil {
			return nil, fmt.Errorf("reading the rules of chain %s: %w", spec.name, err)
		}
		for _, r := range rules {
			cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			name := strings.TrimPrefix(cm, "calyx: ")
			if i := strings.LastIndex(name, " ["); i >= 0 {
				name = name[:i]
			}
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					out[name] = Counter{Packets: ctr.Packets, Bytes: ctr.Bytes}
				}
			}
		}
	}
	return out, nil
}

// SetContents reads the sets' elements as text (addresses, and ranges as
// first-last), for tests and calyxctl.
func (f *Firewall) SetContents() (map[string][]string, error) {
	c, err := f.Conn()
	if err != nil {
		return nil, err
	}
	ss, err := c.GetSets(table)
	if err != nil {
		return nil, fmt.Errorf("listing the sets of table ip %s: %w", TableName, err)
	}
	out := map[string][]string{}
	for _, s := range ss {
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("reading set %s: %w", s.Name, err)
		}
		out[s.Name] = elementsText(s.Interval, elems)
	}
	return out, nil
}

func elementsText(interval bool, elems []nftables.SetElement) []string {
	slices.SortFunc(elems, func(a, b nftables.SetElement) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		// At one address an interval's end sorts before the next start.
		return cmpBool(b.IntervalEnd, a.IntervalEnd)
	})
	var out []string
	if !interval {
		for _, e := range elems {
			a, _ := netip.AddrFromSlice(e.Key)
			out = append(out, a.String())
		}
		return out
	}
	var start *netip.Addr
	for _, e := range elems {
		a, _ := netip.AddrFromSlice(e.Key)
		if !e.IntervalEnd {
			start = &a
			continue
		}
		if start != nil {
			last := netip.AddrFrom4([4]byte(binaryutil.BigEndian.PutUint32(u32(a) - 1)))
			out = append(out, rangeText(*start, last))
			start = nil
		}
	}
	if start != nil {
		out = append(out, rangeText(*start, netip.MustParseAddr("255.255.255.255")))
	}
	return out
}

// rangeText prints a range as a prefix when it is one.
func rangeText(first, last netip.Addr) string {
	for bits := 0; bits <= 32; bits++ {
		p := netip.PrefixFrom(first, bits)
		if p.Masked().Addr() == first && u32(first)+uint32(uint64(1)<<(32-bits)-1) == u32(last) {
			return p.String()
		}
	}
	return first.String() + "-" + last.String()
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
