// Package spawn starts the long-running children of tests and of the lab
// (kube-apiserver, agents) so that they die with this process, and only
// with it.
//
// Pdeathsig fires when the *thread* that forked the child ends, not the
// process, and Go ends a thread whenever a goroutine exits while locked to
// it: netns helpers do exactly that. So the child is forked from a thread
// locked for the child's whole life, by a goroutine that waits for it.
package spawn

import (
	"fmt"
	"os/exec"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
)

// Start starts cmd, inside the network namespace at netnsPath when it is
// not empty (a child inherits the namespace of the thread that forks it),
// and returns a channel that yields cmd.Wait's result.
func Start(cmd *exec.Cmd, netnsPath string) (<-chan error, error) {
	started := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, after the
		// child, and may have been moved into another namespace.
		runtime.LockOSThread()
		if netnsPath != "" {
			h, err := netns.GetFromPath(netnsPath)
			if err != nil {
				started <- fmt.Errorf("opening network namespace %s: %w", netnsPath, err)
				return
			}
			err = netns.Set(h)
			h.Close()
			if err != nil {
				started <- fmt.Errorf("entering network namespace %s: %w", netnsPath, err)
				return
			}
		}
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		if !cmd.SysProcAttr.Setsid {
			cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}
