package main

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary is also the program: with CALYX_PAUSE_MAIN=1 it runs
// main, so that the tests start pause as a process of its own (as PID 1
// of a namespace, too) without building it.
func TestMain(m *testing.M) {
	if os.Getenv("CALYX_PAUSE_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestVersion(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-v")
	cmd.Env = append(os.Environ(), "CALYX_PAUSE_MAIN=1")
	out, err := cmd.Output()
	if err != nil || string(out) != "pause (calyx) 3.10\n" {
		t.Errorf("pause -v = %q, %v; want %q and exit 0", out, err, "pause (calyx) 3.10\n")
	}
}

// pause is a running pause: its process and the lines of its stderr.
type pause struct {
	cmd    *exec.Cmd
	lines  chan string
	exited chan error
}

// startPause starts pause with the clone flags given (CLONE_NEWPID makes
// it PID 1).
func startPause(t *testing.T, cloneflags uintptr) *pause {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "CALYX_PAUSE_MAIN=1")
	cmd.Stderr = w
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: cloneflags}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting pause: %v (a new PID namespace needs root)", err)
	}
	w.Close()
	p := &pause{cmd: cmd, lines: make(chan string, 16), exited: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		r.Close()
	}()
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return p
}

// stop sends sig and wants pause gone within a second, with status 0
// and its farewell on stderr.
func (p *pause) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("pause after %v: %v, want exit status 0", sig, err)
		}
	case <-time.After(time.Second):
		t.Fatalf("pause still runs a second after %v", sig)
	}
	var said []string
	for l := range p.lines {
		said = append(said, l)
	}
	if want := "Shutting down, got signal: " + sig.String(); !strings.Contains(strings.Join(said, "\n"), want) {
		t.Errorf("pause's stderr %q, want %q", said, want)
	}
}

func TestExitsOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			p := startPause(t, 0)
			// Not PID 1 here: the warning says the handlers are in place.
			if l := <-p.lines; !strings.HasPrefix(l, "Warning: pause should be the first process") {
				t.Fatalf("pause's first line %q, want its warning", l)
			}
			p.stop(t, sig)
		})
	}
}

// As PID 1 of a PID namespace, pause inherits the namespace's orphans
// and must reap them when they exit.
func TestReapsOrphans(t *testing.T) {
	p := startPause(t, syscall.CLONE_NEWPID)
	pid := p.cmd.Process.Pid
	// sh exits at once, leaving its sleep to the namespace's init; the
	// sleep must not hold our output pipe, or nsenter "ends" with it.
	sh := "sleep 0.5 </dev/null >/dev/null 2>&1 &"
	if out, err := exec.Command("nsenter", "--target", strconv.Itoa(pid), "--pid", "--", "/bin/sh", "-c", sh).CombinedOutput(); err != nil {
		t.Fatalf("nsenter into pause's PID namespace: %v: %s", err, out)
	}
	var orphan int
	if !eventually(2*time.Second, func() bool {
		if kids := children(pid); len(kids) > 0 {
			orphan = kids[0]
		}
		return orphan != 0
	}) {
		t.Fatalf("no orphan reparented to pause (pid %d)", pid)
	}
	if !eventually(3*time.Second, func() bool {
		_, err := os.Stat("/proc/" + strconv.Itoa(orphan))
		return os.IsNotExist(err)
	}) {
		t.Fatalf("orphan %d is still pause's child (state %s), want it reaped", orphan, procState(orphan))
	}
	p.stop(t, syscall.SIGTERM)
}

// eventually polls done until it says so or d passes.
func eventually(d time.Duration, done func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if done() {
			return true
		}
	}
	return false
}

// children is the processes whose parent is pid, from /proc/*/stat.
func children(pid int) []int {
	var kids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if fields := statFields(p); len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			kids = append(kids, p)
		}
	}
	return kids
}

// statFields is /proc/pid/stat after the command name: state, ppid, …
func statFields(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.Fields(rest)
}

func procState(pid int) string {
	if f := statFields(pid); len(f) > 0 {
		return f[0]
	}
	return "gone"
}
