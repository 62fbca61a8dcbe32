package lab

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/lab/spawn"
)

// process is a long-running program the lab started in a namespace.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
}

// startIn starts argv inside the named network namespace: a child inherits
// the namespace of the thread that forks it. Its output goes to logPath.
// With detach, it gets a session of its own and outlives this process (a
// pod's command started by `calyx-lab pod add`); without, the kernel ends
// it when this process dies.
func startIn(netnsName string, argv []string, env []string, logPath string, detach bool) (*process, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: detach}
	waited, err := spawn.Start(cmd, nsexec.NamedPath(netnsName))
	if err != nil {
		log.Close()
		return nil, fmt.Errorf("starting %s in %s: %w", argv[0], netnsName, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{}), log: log}
	go func() {
		<-waited
		log.Close()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// stop asks the process to end, then kills it after a grace period.
func (p *process) stop() {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// kill ends the process at once, as a crash would.
func (p *process) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}
