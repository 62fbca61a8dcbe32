package nsexec

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netns"
)

// namespaceID is the identity of the namespace the calling thread is in.
func namespaceID() (string, error) {
	h, err := netns.Get()
	if err != nil {
		return "", err
	}
	defer h.Close()
	return h.UniqueId(), nil
}

// newNamed creates a named namespace with CreateNamed, removed when the
// test ends.
func newNamed(t *testing.T) (name string, h netns.NsHandle) {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	name = "cx-nsexec-" + hex.EncodeToString(b)
	if err := CreateNamed(name); err != nil {
		t.Fatalf("%v (the tests run as root)", err)
	}
	h, err := netns.GetFromPath(NamedPath(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Close()
		DeleteNamed(name)
	})
	return name, h
}

// CreateNamed: the namespace iproute2 lists, lo up in it, the caller's
// thread still in its own; again is a no-op; DeleteNamed removes it, and
// a second DeleteNamed is fine.
func TestNamed(t *testing.T) {
	host, err := namespaceID()
	if err != nil {
		t.Fatal(err)
	}
	name, h := newNamed(t)
	if err := CreateNamed(name); err != nil {
		t.Fatalf("CreateNamed of an existing namespace: %v", err)
	}
	if now, _ := namespaceID(); now != host {
		t.Fatal("CreateNamed left the calling thread in the new namespace")
	}
	var flags net.Flags
	if err := Run(h, func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		flags = lo.Flags
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if flags&net.FlagUp == 0 {
		t.Errorf("lo in %s: flags %v, want up", name, flags)
	}
	if err := DeleteNamed(name); err != nil {
		t.Fatal(err)
	}
	if _, err := netns.GetFromPath(NamedPath(name)); err == nil {
		t.Errorf("%s still exists after DeleteNamed", NamedPath(name))
	}
	if err := DeleteNamed(name); err != nil {
		t.Errorf("DeleteNamed of a missing namespace: %v", err)
	}
	if got, want := NamedPath("/proc/1/ns/net"), "/proc/1/ns/net"; got != want {
		t.Errorf("NamedPath of an absolute path = %q, want %q", got, want)
	}
}

// A name left as a plain file, with no namespace behind it (a reboot with
// /run on disk), is what `ip netns list` still shows: DeleteNamed clears it.
func TestDeleteNamedStaleFile(t *testing.T) {
	b := make([]byte, 3)
	rand.Read(b)
	name := "cx-nsexec-stale-" + hex.EncodeToString(b)
	if err := os.MkdirAll(NamedDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(NamedPath(name), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(NamedPath(name)) })
	if err := DeleteNamed(name); err != nil {
		t.Fatalf("DeleteNamed of a stale name: %v", err)
	}
	if _, err := os.Stat(NamedPath(name)); err == nil {
		t.Errorf("%s is still there", NamedPath(name))
	}
}

func TestSwitchAndBack(t *testing.T) {
	host, err := namespaceID()
	if err != nil {
		t.Fatal(err)
	}
	name, h := newNamed(t)
	target := h.UniqueId()
	if target == host {
		t.Fatal("NewNamed gave the host's own namespace")
	}

	path := filepath.Join("/var/run/netns", name)
	errBoom := errors.New("boom")
	type result struct {
		Where string // the namespace f ran in
		Err   error
	}
	for _, tc := range []struct {
		name string
		run  func(f func() error) error
		f    func() error // default: succeed
		want result
	}{
		{name: "Run enters the handle's namespace", run: func(f func() error) error { return Run(h, f) }, want: result{target, nil}},
		{name: "RunAt enters the path's namespace", run: func(f func() error) error { return RunAt(path, f) }, want: result{target, nil}},
		{name: "OnThread stays where the thread is", run: OnThread, want: result{host, nil}},
		{name: "f's error comes back as it is", run: func(f func() error) error { return RunAt(path, f) }, f: func() error { return errBoom }, want: result{target, errBoom}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got result
			got.Err = tc.run(func() (err error) {
				if got.Where, err = namespaceID(); err != nil || tc.f == nil {
					return err
				}
				return tc.f()
			})
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateErrors()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			// Threads handed back to the scheduler are in the host's
			// namespace again: whatever runs on them next.
			for range 20 {
				if now, _ := namespaceID(); now != host {
					t.Fatalf("a thread was left in namespace %s", now)
				}
			}
		})
	}
	if err := RunAt("/nonexistent/netns", func() error { return nil }); err == nil {
		t.Error("RunAt on a missing path succeeded")
	}
}

func TestDialer(t *testing.T) {
	name, h := newNamed(t)
	// A listener on the namespace's loopback, which the host cannot reach.
	var ln net.Listener
	if err := Run(h, func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("in"))
			c.Close()
		}
	}()

	c, err := Dialer(filepath.Join("/var/run/netns", name))(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dialling into the namespace: %v", err)
	}
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "in" {
		t.Errorf("read %q, %v; want \"in\"", buf, err)
	}
	c.Close()
}
