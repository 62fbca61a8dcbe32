package node

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/calyx-net/calyx/lab/cgroups"
)

// InitMain is `calyx-lab node-init CONFIG`: the node's PID 1. It builds the
// node's file system view, joins the node's cgroup, starts containerd and,
// once containerd serves, the kubelet, and reaps every orphan of the node.
// When containerd or the kubelet ends, the node ends: the lab sees it.
func InitMain(args []string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if len(args) != 1 {
		log.Error("usage: calyx-lab node-init CONFIG (the lab starts it; it is not for people)")
		return 2
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		log.Error("reading the node's configuration", "err", err)
		return 1
	}
	var c initConfig
	if err := json.Unmarshal(b, &c); err != nil {
		log.Error("parsing the node's configuration", "file", args[0], "err", err)
		return 1
	}
	log = log.With("node", c.Name)
	if err := setup(c); err != nil {
		log.Error("setting the node up", "err", err)
		return 1
	}
	return supervise(log, c)
}

// setup gives the node its host name, mounts and cgroup.
func setup(c initConfig) error {
	if err := syscall.Sethostname([]byte(c.Name)); err != nil {
		return fmt.Errorf("setting the host name: %w", err)
	}
	if err := mountNode(c.Dir); err != nil {
		return err
	}
	return cgroups.Join(c.Hierarchies, c.Cgroup, 0)
}

// supervise runs containerd, then the kubelet, and reaps children until one
// of the two ends or the node is told to stop.
func supervise(log *slog.Logger, c initConfig) int {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT)
	ctrd, err := startLogged(c.Containerd, c.Path, "/var/log/containerd.log")
	if err != nil {
		log.Error("starting containerd", "err", err)
		return 1
	}
	kubelet := 0
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case s := <-sigs:
			if s != syscall.SIGCHLD {
				log.Info("stopping", "signal", s)
				stop(kubelet, ctrd)
				return 0
			}
			for _, ended := range reap() {
				switch ended.pid {
				case ctrd, kubelet:
					log.Error("a node daemon ended: the node stops", "argv0", argv0(c, ended.pid, ctrd), "status", ended.status)
					stop(kubelet, ctrd)
					return 1
				}
			}
		case <-tick.C:
			if kubelet != 0 {
				continue
			}
			if _, err := os.Stat("/run/containerd/containerd.sock"); err == nil {
				if kubelet, err = startLogged(c.Kubelet, c.Path, "/var/log/kubelet.log"); err != nil {
					log.Error("starting the kubelet", "err", err)
					stop(0, ctrd)
					return 1
				}
			} else if time.Now().After(deadline) {
				log.Error("containerd did not create its socket in 30s: see /var/log/containerd.log on the node")
				stop(0, ctrd)
				return 1
			}
		}
	}
}

func argv0(c initConfig, pid, ctrd int) string {
	if pid == ctrd {
		return c.Containerd[0]
	}
	return c.Kubelet[0]
}

// startLogged starts argv with PATH set and its output appended to the
// node's log file. Its exit is collected by reap, not by exec.Cmd.
func startLogged(argv []string, path, logPath string) (int, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "PATH="+path)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	return cmd.Process.Pid, nil
}

type ended struct {
	pid    int
	status syscall.WaitStatus
}

// reap collects every child that has ended: as PID 1 the node's init
// inherits the orphans of containerd's shims and of the containers.
func reap() []ended {
	var out []ended
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return out
		}
		out = append(out, ended{pid, ws})
	}
}

// stop asks the kubelet, then containerd, to end, and gives them ten
// seconds; the kernel kills what is left when this init returns.
func stop(pids ...int) {
	for _, pid := range pids {
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		alive := false
		reap()
		for _, pid := range pids {
			if pid > 0 && syscall.Kill(pid, 0) == nil {
				alive = true
			}
		}
		if !alive {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
