// Package cniplugin is the calyx CNI plugin: it wires each pod to its node
// with a veth pair, gives the pod a /32 from the IPAM plugin it delegates
// to, and routes that /32 to the host end. ARCHITECTURE.md, "The pod's
// wiring", is the specification.
package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	cnins "github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// Versions are the CNI spec versions calyx speaks.
var Versions = version.PluginSupports("0.3.1", "0.4.0", "1.0.0", "1.1.0")

// delegateTimeout bounds one IPAM call; calyx-ipam has a shorter timeout
// of its own, this only keeps a wedged IPAM binary from hanging the runtime.
const delegateTimeout = 2 * time.Minute

// Funcs are the handlers for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, Status: cmdStatus, GC: cmdGC}
}

func wiringFor(conf *NetConf, args *skel.CmdArgs) *Wiring {
	return &Wiring{
		HostName:    HostVethName(conf.VethPrefix, ParsePodArgs(args.Args), args.ContainerID),
		ContName:    args.IfName,
		ContainerID: args.ContainerID,
	}
}

func cmdAdd(args *skel.CmdArgs) (err error) {
	conf, err := LoadNetConf(args.StdinData)
	if err != nil {
		return err
	}
	w := wiringFor(conf, args)
	if w.MTU, err = conf.ResolveMTU(); err != nil {
		return err
	}
	netns, err := openNetNS(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	// skel makes this check only after ADD has run; by then the pod's
	// "eth0" would sit next to its host end in the node's namespace.
	if same, cerr := cnins.CheckNetNS(args.Netns); cerr != nil {
		return cerr
	} else if same {
		// Code 4, not the library's 8: the spec has no 8, and runtimes act
		// on the spec's codes.
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_NETNS %s is the namespace the plugin runs in, not a pod's: pass the sandbox's netns", args.Netns), "")
	}

	// Refuse a taken interface name before allocating, so that a bad ADD
	// leaves the pool as it found it.
	if err := w.checkContainerSide(netns); err != nil {
		return ifNameError(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), delegateTimeout)
	defer cancel()
	alloc := allocateWhileWiring(ctx, conf, args, w, netns)
	r, err := alloc.r, alloc.err
	if err != nil {
		if alloc.prepared {
			// Nothing was allocated; the pair built meanwhile goes.
			if terr := w.RemoveHost(); terr != nil {
				slog.Error("removing a half-built pod wiring after a failed ADD", "link", w.HostName, "err", terr)
			}
		}
		return ipamError(conf.IPAM.Type, "ADD", err)
	}
	defer func() {
		if err == nil {
			return
		}
		// Only the host end: it takes the pod end with it, and whatever
		// else carries CNI_IFNAME in the pod is not calyx's to remove.
		if terr := w.RemoveHost(); terr != nil {
			slog.Error("removing a half-built pod wiring after a failed ADD", "link", w.HostName, "err", terr)
		}
		// A fresh deadline: the ADD's may be what just ran out.
		dctx, dcancel := context.WithTimeout(context.Background(), delegateTimeout)
		defer dcancel()
		if _, derr := delegate(dctx, "DEL", conf, args); derr != nil {
			slog.Error("releasing the address after a failed ADD", "ipam", conf.IPAM.Type, "err", derr)
		}
	}()

	ipamResult, err := current.NewResultFromResult(r)
	if err != nil {
		return fmt.Errorf("converting the result of IPAM plugin %s: %w; check that it speaks cniVersion %s", conf.IPAM.Type, err, conf.CNIVersion)
	}
	for _, ipc := range ipamResult.IPs {
		if v4 := ipc.Address.IP.To4(); v4 != nil {
			w.IP = v4
			break
		}
	}
	if w.IP == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("IPAM plugin %s returned no IPv4 address (got %v): calyx pods are IPv4, configure an IPv4 pool", conf.IPAM.Type, ipamResult.IPs), "")
	}

	links, err := alloc.links, alloc.wiringErr
	switch {
	case !alloc.prepared:
		links, err = w.Setup(netns)
	case err == nil:
		err = w.Address(netns)
	}
	if err != nil {
		if errors.Is(err, errIfNameTaken) {
			return ifNameError(err)
		}
		return fmt.Errorf("wiring pod %s (%s in %s): %w; the address was released and nothing is left behind, retry the ADD", w.HostName, w.ContName, args.Netns, err)
	}

	result, err := buildResult(conf, w, links, args.Netns, ipamResult)
	if err != nil {
		return err
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// allocation is the IPAM's answer to an ADD and, if the wiring was
// prepared meanwhile, the outcome of Prepare.
type allocation struct {
	r         types.Result
	err       error
	prepared  bool
	links     Links
	wiringErr error
}

// allocateWhileWiring runs the IPAM's ADD and, once the agent has accepted
// the request, the part of the wiring that needs no address (Prepare): the
// allocation is an API write and takes longer than all of that. The
// binary IPAM, or an agent that refuses the request, is waited for first,
// so that a bad request is refused before anything is built: a concurrent
// ADD must not meet a half-built pod that a refusal then removes.
func allocateWhileWiring(ctx context.Context, conf *NetConf, args *skel.CmdArgs, w *Wiring, netns ns.NetNS) allocation {
	accepted := make(chan struct{})
	done := make(chan allocation, 1)
	go func() {
		r, err := delegateAccepted(ctx, "ADD", conf, args, func() { close(accepted) })
		done <- allocation{r: r, err: err}
	}()
	select {
	case a := <-done:
		return a
	case <-accepted:
	}
	links, werr := w.Prepare(netns)
	a := <-done
	a.prepared, a.links, a.wiringErr = true, links, werr
	return a
}

// buildResult appends calyx's interfaces, address and route to prevResult,
// when calyx is chained after another plugin, or to an empty result.
func buildResult(conf *NetConf, w *Wiring, links Links, netnsPath string, ipamResult *current.Result) (*current.Result, error) {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if conf.PrevResult != nil {
		prev, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return nil, fmt.Errorf("converting prevResult: %w", err)
		}
		res = prev
	}
	if res.DNS.IsEmpty() {
		res.DNS = ipamResult.DNS
	}
	base := len(res.Interfaces)
	res.Interfaces = append(res.Interfaces,
		&current.Interface{Name: w.HostName, Mac: links.HostMAC, Mtu: w.MTU},
		&current.Interface{Name: w.ContName, Mac: links.ContMAC, Mtu: w.MTU, Sandbox: netnsPath},
	)
	res.IPs = append(res.IPs, &current.IPConfig{
		Interface: current.Int(base + 1),
		Address:   net.IPNet{IP: w.IP, Mask: hostRoute32},
	})
	res.Routes = append(res.Routes, &types.Route{Dst: *defaultDst, GW: GatewayIP})
	return res, nil
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := LoadNetConf(args.StdinData)
	if err != nil {
		return err
	}
	w := wiringFor(conf, args)
	if err := w.Teardown(args.Netns); err != nil {
		// Keep the address: releasing it while its route may still point
		// at a live veth could hand it to another pod. The runtime retries.
		return fmt.Errorf("removing pod %s: %w; the address is kept until a DEL succeeds, retry the DEL", w.HostName, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), delegateTimeout)
	defer cancel()
	if _, err := delegate(ctx, "DEL", conf, args); err != nil {
		return ipamError(conf.IPAM.Type, "DEL", err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := LoadNetConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"CHECK needs the ADD result as prevResult: the runtime did not pass one; call CHECK through a runtime that caches results (libcni)", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("converting prevResult: %w", err)
	}
	w := wiringFor(conf, args)

	contIdx, hostFound := -1, false
	for i, intf := range prev.Interfaces {
		switch {
		case intf.Name == args.IfName && intf.Sandbox == args.Netns:
			contIdx = i
			w.MTU = intf.Mtu
		case intf.Name == w.HostName && intf.Sandbox == "":
			hostFound = true
		}
	}
	if contIdx < 0 || !hostFound {
		return fmt.Errorf("prevResult lists no interfaces %s (host) and %s in %s: this attachment was not made by calyx with these arguments; DEL and ADD it",
			w.HostName, args.IfName, args.Netns)
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface == contIdx && ipc.Address.IP.To4() != nil {
			w.IP = ipc.Address.IP.To4()
		}
	}
	if w.IP == nil {
		return fmt.Errorf("prevResult has no IPv4 address on %s: DEL and ADD the pod", args.IfName)
	}
	if w.MTU == 0 { // results before 1.1.0 carry no MTU
		if w.MTU, err = conf.ResolveMTU(); err != nil {
			return err
		}
	}

	netns, err := openNetNS(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	if err := w.Check(netns, prev.Interfaces[contIdx].Mac); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), delegateTimeout)
	defer cancel()
	if _, err := delegate(ctx, "CHECK", conf, args); err != nil {
		return ipamError(conf.IPAM.Type, "CHECK", err)
	}
	return nil
}

// cmdStatus reports 50 (plugin not available) until the agent has written
// its ready state and while the IPAM plugin says it cannot allocate, so the
// runtime holds pods back instead of failing each ADD.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := LoadNetConf(args.StdinData)
	if err != nil {
		return err
	}
	for _, name := range []string{StateNodename, StateMTU} {
		path := filepath.Join(conf.StateDir, name)
		b, err := os.ReadFile(path)
		if err != nil || strings.TrimSpace(string(b)) == "" {
			return types.NewError(types.ErrPluginNotAvailable,
				fmt.Sprintf("calyx-agent has not written its ready state: %s is missing or empty; start calyx-agent on this node (or point state_dir at where it writes)", path),
				fmt.Sprint(err))
		}
	}
	if _, err := conf.ResolveMTU(); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), delegateTimeout)
	defer cancel()
	if _, err := delegate(ctx, "STATUS", conf, args); err != nil {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("IPAM plugin %s is not available: %v", conf.IPAM.Type, err), "")
	}
	return nil
}

// cmdGC hands the runtime's list of valid attachments to IPAM, which frees
// the addresses of every other attachment of this network. Host veths need
// no collection: the kernel removes a pair with the pod's netns.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := LoadNetConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), delegateTimeout)
	defer cancel()
	if _, err := delegate(ctx, "GC", conf, args); err != nil {
		return ipamError(conf.IPAM.Type, "GC", err)
	}
	return nil
}

func openNetNS(path string) (ns.NetNS, error) {
	netns, err := ns.GetNS(path)
	if err == nil {
		// GetNS accepts any namespace file (/proc/self/ns/mnt too); entering
		// one that is not a network namespace fails later, after work.
		t, terr := nsType(netns)
		if terr == nil && t == unix.CLONE_NEWNET {
			return netns, nil
		}
		netns.Close()
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_NETNS %s is a namespace but not a network namespace: pass the sandbox's netns", path), nsTypeDetails(t, terr))
	}
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	if errors.As(err, &notExist) || errors.As(err, &notNS) {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_NETNS: the pod's network namespace %s does not exist or is not a netns: the sandbox is gone; recreate it and retry", path), err.Error())
	}
	return nil, fmt.Errorf("opening the pod's network namespace %s: %w", path, err)
}

func nsTypeDetails(t int, err error) string {
	if err != nil {
		return "NS_GET_NSTYPE: " + err.Error()
	}
	return fmt.Sprintf("namespace type %#x, want CLONE_NEWNET (%#x)", t, unix.CLONE_NEWNET)
}

func ifNameError(err error) error {
	if errors.Is(err, errIfNameTaken) {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_IFNAME is already in use: %v; pass another CNI_IFNAME or DEL the attachment that owns it", err), "")
	}
	return err
}

// ipamError keeps the IPAM plugin's error code, so that the runtime sees
// "try again later" or "exhausted" as IPAM said it, and adds which call of
// which plugin failed.
func ipamError(plugin, op string, err error) error {
	var e *types.Error
	if errors.As(err, &e) {
		return types.NewError(e.Code, fmt.Sprintf("IPAM plugin %s failed on %s: %s", plugin, op, e.Msg), e.Details)
	}
	return types.NewError(types.ErrInternal,
		fmt.Sprintf("IPAM plugin %s failed on %s: %v; check that it is installed in CNI_PATH and its configuration", plugin, op, err), "")
}
