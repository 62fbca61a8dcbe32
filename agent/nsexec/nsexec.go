// Package nsexec runs a function inside a network namespace given by
// handle, for the calls that act on the calling thread's namespace
// (sysctls under /proc/sys/net, sockets, forks).
package nsexec

import (
	"errors"
	"fmt"
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
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("entering the namespace: %w", err)
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
