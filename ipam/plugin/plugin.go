package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/calyx-net/calyx/ipam"
)

// Funcs are the plugin's CNI verbs, for skel.PluginMainFuncs: the binary,
// with an API client of its own per call.
func Funcs() skel.CNIFuncs {
	var h Handler
	return skel.CNIFuncs{
		Add: func(args *skel.CmdArgs) error {
			r, version, err := h.Add(args, nil)
			if err != nil {
				return err
			}
			return types.PrintResult(r, version)
		},
		Del: h.Del, Check: h.Check, GC: h.GC, Status: h.Status,
	}
}

// Handler runs calyx-ipam's verbs. The binary uses the zero value; the
// node agent, which serves them on a unix socket, shares one allocator
// over its warm connection and informer cache.
type Handler struct {
	// NewAllocator returns the allocator for one call; nil makes an API
	// client from ipam.kubeconfig.
	NewAllocator func(conf *NetConf, opts ipam.Options) (*ipam.IPAM, error)
	// NewAnnotator returns what reads the pod's annotations on ADD; nil
	// makes an API client from ipam.kubeconfig.
	NewAnnotator func(conf *NetConf) (Annotator, error)
}

// session is one invocation's parsed configuration and allocator.
type session struct {
	conf *NetConf
	node string
	m    *ipam.IPAM
	ctx  context.Context
	stop context.CancelFunc
}

// nodeNeed says whether a verb needs the node's name.
type nodeNeed int

const (
	nodeRequired nodeNeed = iota
	// nodeOptional: DEL must work without it; with it, DEL also finds an
	// allocation whose index entry was never written.
	nodeOptional
	nodeUnused
)

func (h *Handler) open(args *skel.CmdArgs, need nodeNeed) (*session, error) {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return nil, err
	}
	s := &session{conf: conf}
	if need != nodeUnused {
		s.node, err = conf.IPAM.nodeName()
		if err != nil && need == nodeRequired {
			return nil, err
		}
	}
	opts := ipam.Options{
		Node:             s.node,
		Pools:            conf.IPAM.Pools,
		MaxBlocksPerNode: conf.IPAM.MaxBlocksPerNode,
		StrictAffinity:   conf.IPAM.StrictAffinity,
		NodeLabels:       conf.IPAM.nodeLabels,
	}
	newAlloc := h.NewAllocator
	if newAlloc == nil {
		newAlloc = clientAllocator
	}
	if s.m, err = newAlloc(conf, opts); err != nil {
		return nil, err
	}
	s.ctx, s.stop = context.WithTimeout(context.Background(), conf.IPAM.timeout)
	return s, nil
}

// restConfig is the binary's API configuration: the kubeconfig the agent
// writes, with the node's credential.
func restConfig(conf *NetConf) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", conf.IPAM.Kubeconfig)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "cannot load the kubeconfig",
			fmt.Sprintf("%s: %v; the calyx agent writes it: check ipam.kubeconfig and that calyx-node runs", conf.IPAM.Kubeconfig, err))
	}
	// Every request ends within the configured time, so an unreachable
	// API server is an error the runtime can retry, not a hung pod start.
	cfg.Timeout = conf.IPAM.timeout
	cfg.QPS, cfg.Burst = -1, -1
	return cfg, nil
}

// clientAllocator is the binary's allocator: a client of its own.
func clientAllocator(conf *NetConf, opts ipam.Options) (*ipam.IPAM, error) {
	cfg, err := restConfig(conf)
	if err != nil {
		return nil, err
	}
	m, err := ipam.NewForConfig(cfg, opts)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "cannot create the API client", err.Error())
	}
	return m, nil
}

// clientAnnotator is the binary's annotation reader, on the same
// kubeconfig.
func clientAnnotator(conf *NetConf) (Annotator, error) {
	cfg, err := restConfig(conf)
	if err != nil {
		return nil, err
	}
	c, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "cannot create the API client", err.Error())
	}
	return KubeAnnotator{Client: c}, nil
}

// lock serialises this node's CNI calls. The wait has its own bound: a
// burst of pod starts on one node queues here, and only the API calls
// after it are held to ipam.timeout.
func (s *session) lock() (func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.conf.IPAM.lockTimeout)
	defer cancel()
	unlock, err := ipam.LockFile(ctx, s.conf.IPAM.LockFile)
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, "another CNI call on this node holds the IPAM lock", err.Error())
	}
	s.stop()
	s.ctx, s.stop = context.WithTimeout(context.Background(), s.conf.IPAM.timeout)
	return unlock, nil
}

func (s *session) handle(containerID string) string { return s.conf.Name + "." + containerID }

// Add allocates the pod's address; the result is to be printed in the
// returned cniVersion.
//
// accepted, if set, is called once the request is sound (netconf, pod,
// node and pools) and only the allocation's write remains: the calyx
// plugin wires the pod meanwhile, while a refusal of the request itself
// still comes before anything is built.
func (h *Handler) Add(args *skel.CmdArgs, accepted func()) (types.Result, string, error) {
	pod, err := parseArgs(args.Args)
	if err != nil {
		return nil, "", err
	}
	s, err := h.open(args, nodeRequired)
	if err != nil {
		return nil, "", err
	}
	defer s.stop()
	// Before the node's lock: the reads need not hold up other pods.
	req, err := h.request(s, pod)
	if err != nil {
		return nil, "", err
	}
	// Only a hint: a request it would refuse goes on to Assign unaccepted,
	// which answers with the refusal (or the allocation a retried ADD
	// already holds). A fixed address is checked only by the write.
	if accepted != nil && !req.req.Addr.IsValid() && s.m.CheckPools(s.ctx, req.req.Pools) == nil {
		accepted()
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, "", err
	}
	defer unlock()
	a, err := s.m.Assign(s.ctx, s.node, s.handle(args.ContainerID), ipam.Attrs{
		Namespace: pod.Namespace, Pod: pod.Name, ContainerID: args.ContainerID,
	}, req.req)
	if err != nil {
		return nil, "", s.classify(err, req.source, "cannot allocate an address")
	}
	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		IPs:        []*current.IPConfig{{Address: hostNet(a.Addr)}},
	}
	return result, s.conf.CNIVersion, nil
}

// request reads what the pod's annotations ask for.
func (h *Handler) request(s *session, pod podArgs) (podRequest, error) {
	newAnn := h.NewAnnotator
	if newAnn == nil {
		newAnn = clientAnnotator
	}
	a, err := newAnn(s.conf)
	if err != nil {
		return podRequest{}, err
	}
	r, err := requestFor(s.ctx, a, pod)
	if err != nil {
		return podRequest{}, s.classify(err, "", "cannot read the pod's annotations")
	}
	return r, nil
}

// Del releases the pod's address; releasing nothing is no error.
func (h *Handler) Del(args *skel.CmdArgs) error {
	s, err := h.open(args, nodeOptional)
	if err != nil {
		return err
	}
	defer s.stop()
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := s.m.ReleaseByHandle(s.ctx, s.handle(args.ContainerID)); err != nil {
		return s.classify(err, "", "cannot release the address")
	}
	return nil
}

// Check says whether the pod still holds the address prevResult names.
func (h *Handler) Check(args *skel.CmdArgs) error {
	s, err := h.open(args, nodeRequired)
	if err != nil {
		return err
	}
	defer s.stop()
	a, found, err := s.m.Lookup(s.ctx, s.node, s.handle(args.ContainerID))
	if err != nil {
		return s.classify(err, "", "cannot read the allocation")
	}
	if !found {
		return types.NewError(ErrCheckFailed, "no address is allocated",
			fmt.Sprintf("handle %s holds no address: the allocation was released; delete and re-create the pod", s.handle(args.ContainerID)))
	}
	if s.conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&s.conf.NetConf); err != nil {
			return types.NewError(types.ErrDecodingFailure, "cannot read prevResult", err.Error())
		}
		if s.conf.PrevResult != nil {
			prev, err := current.NewResultFromResult(s.conf.PrevResult)
			if err != nil {
				return types.NewError(types.ErrDecodingFailure, "cannot read prevResult", err.Error())
			}
			addr := hostNet(a.Addr)
			want := addr.String()
			if !slices.ContainsFunc(prev.IPs, func(ip *current.IPConfig) bool { return ip.Address.String() == want }) {
				return types.NewError(ErrCheckFailed, "the allocated address is not in prevResult",
					fmt.Sprintf("handle %s holds %s", s.handle(args.ContainerID), want))
			}
		}
	}
	return nil
}

// GC releases the node's addresses whose attachment the runtime no longer
// lists.
func (h *Handler) GC(args *skel.CmdArgs) error {
	s, err := h.open(args, nodeRequired)
	if err != nil {
		return err
	}
	defer s.stop()
	valid := map[string]bool{}
	for _, a := range s.conf.ValidAttachments {
		valid[a.ContainerID] = true
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := s.m.ReleaseStale(s.ctx, s.node, s.conf.Name, valid); err != nil {
		return s.classify(err, "", "garbage collection failed")
	}
	return nil
}

// Status says whether addresses can be allocated now.
func (h *Handler) Status(args *skel.CmdArgs) error {
	s, err := h.open(args, nodeUnused)
	if err != nil {
		return err
	}
	defer s.stop()
	if err := s.m.Ready(s.ctx); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "the Kubernetes API is not reachable",
			fmt.Sprintf("%v: check ipam.kubeconfig (%s) and that the API server is up", err, s.conf.IPAM.Kubeconfig))
	}
	return nil
}

// classify maps allocator errors to CNI codes: configuration problems are
// 7, a full pool is ErrNoFreeAddress, a taken fixed address
// ErrAddressTaken, and anything on the way to the API server is 11, so
// the runtime retries instead of giving up on the pod. source names the
// annotation the request came from: the message then starts with it, as
// `kubectl describe pod` shows it.
func (s *session) classify(err error, source, msg string) error {
	var e *types.Error
	user := func(code uint, msg string) error {
		if source != "" {
			return types.NewError(code, fmt.Sprintf("%s: %v", source, err), "")
		}
		return types.NewError(code, msg, err.Error())
	}
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, ipam.ErrExhausted):
		return user(ErrNoFreeAddress, "no free address in the IP pools")
	case errors.Is(err, ipam.ErrAddressInUse):
		return user(ErrAddressTaken, "the address asked for is taken")
	case errors.Is(err, ipam.ErrNoPool), errors.Is(err, ipam.ErrUnknownPool), errors.Is(err, ipam.ErrPoolDisabled), errors.Is(err, ipam.ErrOutsidePools):
		return user(types.ErrInvalidNetworkConfig, "no usable IP pool")
	case apierrors.IsUnauthorized(err), apierrors.IsForbidden(err):
		return types.NewError(types.ErrInvalidNetworkConfig, msg,
			fmt.Sprintf("%v: the credentials in %s are refused; the calyx agent refreshes them: is calyx-node running?", err, s.conf.IPAM.Kubeconfig))
	}
	return types.NewError(types.ErrTryAgainLater, msg+": the Kubernetes API is unreachable or did not answer in time", fmt.Sprintf("%v (timeout %s)", err, s.conf.IPAM.timeout))
}

func hostNet(a netip.Addr) net.IPNet {
	return net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}
