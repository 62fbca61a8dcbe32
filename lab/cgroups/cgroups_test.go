package cgroups

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A tree made under this process's cgroup holds a process that Join put
// there; Remove ends it and leaves no directory the test made.
func TestCreateJoinRemove(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("cgroups need root: run the tests as root")
	}
	hs, err := Hierarchies()
	if err != nil {
		t.Fatal(err)
	}
	base, err := Base(hs)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(base, fmt.Sprintf("calyx-test-%d", os.Getpid()), "node", "system")
	created, err := Create(hs, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(created) < 3*len(hs) {
		t.Fatalf("created %v, want the three new levels in each of %d hierarchies", created, len(hs))
	}
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	if err := Join(hs, path, sleep.Process.Pid); err != nil {
		sleep.Process.Kill()
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(hs[0], path, "cgroup.procs"))
	if want := fmt.Sprintf("%d\n", sleep.Process.Pid); string(b) != want {
		t.Errorf("cgroup.procs = %q, want %q", b, want)
	}
	done := make(chan error, 1)
	go func() { done <- sleep.Wait() }()
	top := filepath.Dir(filepath.Dir(path))
	if err := Remove(hs, top, created); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if ws, ok := sleep.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Errorf("sleep ended with %v, want SIGKILL", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the process in the tree still runs after Remove")
	}
	for _, d := range created {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s is still there", d)
		}
	}
}
