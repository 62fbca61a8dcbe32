package cptest

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// ForwardInto makes the API server at apiURL, listening on the host's
// loopback, reachable at the same address inside the network namespace at
// netnsPath, so that a kubeconfig works unchanged there: a listener in
// that namespace whose connections the test process splices to the real
// one. Nothing is added to the host's namespace. It stops with the test.
func ForwardInto(t testing.TB, netnsPath, apiURL string) {
	t.Helper()
	u, err := url.Parse(apiURL)
	if err != nil {
		t.Fatalf("parsing the API server's URL %q: %v", apiURL, err)
	}
	var ln net.Listener
	err = ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", u.Host)
		return err
	})
	if err != nil {
		t.Fatalf("listening for the API server in %s: %v", netnsPath, err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				splice(c, u.Host)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
}

func splice(c net.Conn, target string) {
	defer c.Close()
	up, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, up); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}
