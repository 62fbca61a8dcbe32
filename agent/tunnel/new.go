package tunnel

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Selection is what --ipip-datapath asks for: a Mode, or auto.
const (
	SelectAuto   = "auto"
	SelectKernel = string(ModeKernel)
	SelectEBPF   = string(ModeEBPF)
)

// Options are what a Datapath needs besides the desired.TunnelConfig Set takes.
type Options struct {
	// Logger receives what the datapath creates, adopts and changes.
	// Nil means slog.Default().
	Logger *slog.Logger
	// NetNS is the network namespace the datapath acts on: tunl0, the
	// underlay NIC, their tc programs. Zero means the namespace of the
	// thread that calls New (the agent runs inside its node's namespace).
	// The Datapath keeps its own handle, so later calls from any thread act
	// on the same namespace.
	//
	// The eBPF datapath pins nothing in bpffs: a new agent finds its maps
	// through the programs attached to the namespace's devices, so agents
	// of several nodes on one host (the lab) never share or collide.
	NetNS netns.NsHandle
}

// New returns the datapath that selection names: "kernel", "ebpf", or
// "auto", which uses the kernel's ipip device when the kernel can create one
// and the eBPF datapath otherwise. reason says in a sentence which one was
// chosen and why, for the agent's log.
func New(selection string, opts Options) (dp Datapath, reason string, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	switch selection {
	case SelectAuto, SelectKernel, SelectEBPF:
	default:
		return nil, "", fmt.Errorf("unknown IPIP datapath %q: use auto, kernel or ebpf", selection)
	}

	h, err := handleFor(opts.NetNS)
	if err != nil {
		return nil, "", err
	}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()

	existing, err := existingMode(h)
	if err != nil {
		return nil, "", err
	}

	switch selection {
	case SelectKernel:
		if existing == ModeEBPF {
			return nil, "", fmt.Errorf("%s is the eBPF datapath's device, left by an earlier agent: run with --ipip-datapath=ebpf (or auto), or delete it (ip link del %s) to switch", DeviceName, DeviceName)
		}
		if err := createIPIP(h); err != nil {
			return nil, "", fmt.Errorf("kernel IPIP datapath requested, but %w: run with --ipip-datapath=ebpf (or auto)", err)
		}
		return newKernel(h, opts), "kernel datapath requested", nil

	case SelectEBPF:
		if existing == ModeKernel {
			return nil, "", fmt.Errorf("%s is the kernel's ipip device (the ipip module is loaded): run with --ipip-datapath=kernel (or auto)", DeviceName)
		}
		d, err := newEBPF(h, opts)
		if err != nil {
			return nil, "", err
		}
		return d, "eBPF datapath requested", nil
	}

	// auto: keep what runs, so that a restarted agent never swaps the
	// datapath under flowing traffic; else prefer the kernel's device.
	switch existing {
	case ModeKernel:
		return newKernel(h, opts), fmt.Sprintf("%s is already the kernel's ipip device", DeviceName), nil
	case ModeEBPF:
		d, err := newEBPF(h, opts)
		if err != nil {
			return nil, "", err
		}
		return d, fmt.Sprintf("%s already runs the eBPF datapath", DeviceName), nil
	}
	kerr := createIPIP(h)
	if kerr == nil {
		return newKernel(h, opts), "the kernel can create ipip devices", nil
	}
	d, err := newEBPF(h, opts)
	if err != nil {
		return nil, "", fmt.Errorf("%w (and the kernel datapath is unavailable too: %v)", err, kerr)
	}
	return d, fmt.Sprintf("%v, so tc BPF programs carry IPIP", kerr), nil
}

func handleFor(ns netns.NsHandle) (*netlink.Handle, error) {
	var h *netlink.Handle
	var err error
	if ns == 0 {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		// rtnetlink only, as in the agent: other families need modules
		// (xfrm_user, nfnetlink) that a minimal kernel may lack.
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("opening netlink in the node's network namespace: %w (the agent needs CAP_NET_ADMIN)", err)
	}
	return h, nil
}

// existingMode says which datapath owns tunl0 now: "" when there is none.
func existingMode(h *netlink.Handle) (Mode, error) {
	link, err := h.LinkByName(DeviceName)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return "", nil
		}
		return "", fmt.Errorf("looking up %s: %w", DeviceName, err)
	}
	switch {
	case link.Type() == "ipip":
		return ModeKernel, nil
	case isEBPFDevice(h, link):
		return ModeEBPF, nil
	}
	return "", fmt.Errorf("%s exists as a %s device that calyx did not create: delete it (ip link del %s) and restart the agent", DeviceName, link.Type(), DeviceName)
}
