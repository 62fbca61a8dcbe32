// Package nsexec runs a function inside a network namespace, for the calls
// that act on the calling thread's namespace (sysctls under /proc/sys/net,
// sockets, forks, netns.NewNamed), and brings the thread back. The agent,
// its tests' namespaces (agent/testnet), and the lab's and the bench's
// namespace helpers go through it. lab/spawn does not: the thread that
// forks a long-lived child stays in the child's namespace for the child's
// whole life, which is another contract.
package nsexec

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// Run runs f on an OS thread switched into ns, and switches the thread
// back before handing it to the Go scheduler again. It does not let the
// thread die instead, although that is the simpler way to never leak a
// namespace: a child process started with Pdeathsig (kube-apiserver in
// lab/controlplane) is killed when the thread that forked it ends, and any
// thread may have been that one. Only when switching back fails does the
// thread stay locked and die.
func Run(ns netns.NsHandle, f func() error) error {
	return onThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("entering the namespace: %w", err)
		}
		return nil
	}, f)
}

// RunAt is Run for the namespace at path: a named one under
// /var/run/netns, or /proc/PID/ns/net.
func RunAt(path string, f func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer ns.Close()
	return Run(ns, f) // f's own error as it is: callers match on it
}

// OnThread runs f on an OS thread of its own and switches that thread
// back into the namespace it started in afterwards, for calls that move
// the calling thread themselves (netns.NewNamed creates a namespace and
// leaves the thread in it).
func OnThread(f func() error) error {
	return onThread(func() error { return nil }, f)
}

// Dialer returns a DialContext whose connections start inside the
// namespace at path (the caller's own when path is empty). A socket stays
// in the namespace it was opened in, so the connection is usable from any
// thread afterwards.
func Dialer(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		dial := func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		}
		if path == "" {
			return c, dial()
		}
		err := RunAt(path, dial)
		return c, err
	}
}

// onThread runs enter then f on a locked OS thread, and puts the thread
// back into the namespace it had before enter.
func onThread(enter, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("reading the thread's namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			errc <- err
			return // the thread may be half-switched: let it die
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leaving the namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
