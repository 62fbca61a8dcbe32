// Command pause is a pod sandbox's first process, as Kubernetes'
// build/pause/linux/pause.c is: it holds the pod's namespaces open by
// sleeping until SIGINT or SIGTERM, then exits 0; and, PID 1 of the pod's
// PID namespace when the pod shares it, it reaps the orphans the kernel
// hands it, which would otherwise stay zombies. The lab's image
// registry.k8s.io/pause:3.10 runs it (lab/images), since no registry is
// reachable to pull Kubernetes' own.
//
//	pause        sleep until SIGINT or SIGTERM
//	pause -v     print the version
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is the pause.c release this one stands in for.
const version = "3.10"

func main() {
	showVersion := flag.Bool("v", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Printf("pause (calyx) %s\n", version)
		return
	}
	// Separate channels: a burst of SIGCHLDs fills its own, never
	// crowding out the SIGTERM (signal.Notify drops what does not fit).
	down := make(chan os.Signal, 1)
	signal.Notify(down, syscall.SIGINT, syscall.SIGTERM)
	child := make(chan os.Signal, 1)
	signal.Notify(child, syscall.SIGCHLD)
	// After the handlers are in place, so that whoever reads it knows a
	// signal will be handled (pause.c warns before; nothing else differs).
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	reap() // what exited before SIGCHLD was handled
	for {
		select {
		case s := <-down:
			fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", s)
			os.Exit(0)
		case <-child:
			reap()
		}
	}
}

// reap waits for every child that has exited: one SIGCHLD may stand for
// several.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
