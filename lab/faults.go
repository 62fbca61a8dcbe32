package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// What fault-injection tests (test/fault) do to a running lab: stop the API
// server, delete a node, drive CNI by hand, attach a stranger to the
// underlay, and run code inside any of the lab's namespaces.

// InNetNS runs fn on a thread switched into the named network namespace (a
// node, a pod's PodNetNS, UnderlayNS). Sockets fn opens stay in that
// namespace after it returns, so a test can use them from any goroutine.
func InNetNS(name string, fn func() error) error { return inNetNS(name, fn) }

// StopAPIServer kills kube-apiserver as a crash would, leaving etcd.
func (l *Lab) StopAPIServer() { l.cp.StopAPIServer() }

// StartAPIServer starts kube-apiserver again on the same address and waits
// until it is ready.
func (l *Lab) StartAPIServer(ctx context.Context) error {
	if err := l.cp.StartAPIServer(ctx); err != nil {
		return fmt.Errorf("restarting kube-apiserver (its log is in %s): %w", l.cp.Dir, err)
	}
	return nil
}

// DeleteNode deletes the Node object, as `kubectl delete node` does; the
// node's namespace and agent stay, as a machine removed from the cluster
// keeps running until someone turns it off.
func (l *Lab) DeleteNode(ctx context.Context, name string) error {
	err := l.Kube.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting Node %s: %w", name, err)
	}
	return nil
}

// RegisterNode writes the Node object again after DeleteNode, as the
// kubelet does when it starts; the node's agent then announces it anew.
func (l *Lab) RegisterNode(ctx context.Context, name string) error {
	s, err := ReadState(l.opts.Dir)
	if err != nil {
		return err
	}
	n, ok := s.Node(name)
	if !ok {
		return fmt.Errorf("no node %q in the lab: `calyx-lab status` lists them", name)
	}
	ip, err := netip.ParseAddr(n.IP)
	if err != nil {
		return fmt.Errorf("node %s's address %q in the state file: %w", name, n.IP, err)
	}
	// The node's agent annotates the Node as soon as it reappears, which
	// can race the status write: retry with the object as it is then.
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		return l.registerNode(ctx, name, ip, name == ControlPlaneNode)
	})
}

// Sandbox is a pod's network namespace as containerd holds it between CNI
// ADD and the kubelet's Pod status: wired (or not) by the node's real
// plugins through libcni, with no Pod object. Tests that need each CNI
// call's own outcome use it instead of AddPod.
type Sandbox struct {
	Namespace, Name, Node string
	NetNS, ContainerID    string
	// IP and HostIface are set by a successful Add.
	IP, HostIface string
}

// NewSandbox creates the sandbox's namespace, with a fresh container ID.
func (c *Client) NewSandbox(namespace, name, node string) (*Sandbox, error) {
	id := make([]byte, 32)
	rand.Read(id)
	sb := &Sandbox{Namespace: namespace, Name: name, Node: node, NetNS: PodNetNS(namespace, name), ContainerID: hex.EncodeToString(id)}
	if err := ensureNetNS(sb.NetNS); err != nil {
		return nil, err
	}
	return sb, nil
}

func (c *Client) sandboxNode(sb *Sandbox) (*NodeState, *PodState, error) {
	s, err := ReadState(c.Dir)
	if err != nil {
		return nil, nil, err
	}
	node, ok := s.Node(sb.Node)
	if !ok {
		return nil, nil, fmt.Errorf("no node %q in the lab: `calyx-lab status` lists them", sb.Node)
	}
	return node, &PodState{Namespace: sb.Namespace, Name: sb.Name, Node: sb.Node, NetNS: sb.NetNS, ContainerID: sb.ContainerID}, nil
}

// CNIAdd runs CNI ADD for the sandbox with its node's conflist, from inside
// the node. A plugin's error is returned wrapped: errors.As finds its
// *types.Error with the CNI code.
func (c *Client) CNIAdd(ctx context.Context, sb *Sandbox) error {
	node, p, err := c.sandboxNode(sb)
	if err != nil {
		return err
	}
	res, err := cniAdd(ctx, node, p)
	if err != nil {
		return err
	}
	for _, ip := range res.IPs {
		sb.IP = ip.Address.IP.String()
	}
	for _, iface := range res.Interfaces {
		if iface.Sandbox == "" {
			sb.HostIface = iface.Name
		}
	}
	return nil
}

// CNIDel runs CNI DEL for the sandbox, as the runtime does after a failed
// ADD and when the pod goes.
func (c *Client) CNIDel(ctx context.Context, sb *Sandbox) error {
	node, p, err := c.sandboxNode(sb)
	if err != nil {
		return err
	}
	return cniDel(ctx, node, p)
}

// RemoveSandbox deletes the sandbox's namespace.
func (c *Client) RemoveSandbox(sb *Sandbox) error { return deleteNetNS(sb.NetNS) }

// Stranger is a namespace wired to the underlay bridge like a node, with an
// address in the node subnet, that is not a node: no Node object, no agent.
type Stranger struct {
	NetNS string
	IP    netip.Addr
	peer  string
}

// AttachStranger wires a new namespace named name to the underlay with
// address addr (in UnderlayCIDR). Remove it with Detach.
func AttachStranger(name string, addr netip.Addr) (_ *Stranger, err error) {
	if !netip.MustParsePrefix(UnderlayCIDR).Contains(addr) {
		return nil, fmt.Errorf("%s is not in the underlay %s: pick an address there that no node has", addr, UnderlayCIDR)
	}
	if err := ensureNetNS(name); err != nil {
		return nil, err
	}
	st := &Stranger{NetNS: name, IP: addr, peer: name}
	if len(st.peer) > 15 {
		st.peer = st.peer[len(st.peer)-15:]
	}
	defer func() {
		if err != nil {
			st.Detach()
		}
	}()
	err = inNetNS(UnderlayNS, func() error {
		if err := ensureVethTo(st.peer, NICName, name); err != nil {
			return err
		}
		br, err := netlink.LinkByName(bridgeName)
		if err != nil {
			return err
		}
		l, err := netlink.LinkByName(st.peer)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return nil, fmt.Errorf("wiring %s to the underlay: %w", name, err)
	}
	err = inNetNS(name, func() error {
		l, err := netlink.LinkByName(NICName)
		if err != nil {
			return err
		}
		if err := ensureAddr(l, addr.String()+"/24"); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return nil, fmt.Errorf("addressing %s: %w", name, err)
	}
	return st, nil
}

// Detach removes the stranger's namespace and its port on the bridge.
func (s *Stranger) Detach() error {
	var errs []error
	// Deleting the namespace deletes its veth end, and with it the pair.
	if err := deleteNetNS(s.NetNS); err != nil {
		errs = append(errs, err)
	}
	err := inNetNS(UnderlayNS, func() error {
		if l, err := netlink.LinkByName(s.peer); err == nil {
			return netlink.LinkDel(l)
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
