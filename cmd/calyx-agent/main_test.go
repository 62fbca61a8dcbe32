package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/calyx-net/calyx/agent/testnet"
)

// The built binary, started inside a node's namespace the way the lab does
// it, with an API server that is not there: it keeps running, says why it
// is not ready in /readyz and in its log, and exits cleanly on SIGTERM.
func TestBinaryWithoutAPIServer(t *testing.T) {
	dir := t.TempDir()
	bin := agentBinary(t)
	ul := testnet.NewUnderlay(t)
	node := ul.AddNode(t, "cx-bin", "10.10.100.208/24")
	// Inside the namespace, 127.0.0.1:6443 is the node's own loopback,
	// where nothing listens.
	kubeconfig := filepath.Join(dir, "kubeconfig")
	os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600)

	var logs bytes.Buffer
	cmd := exec.Command("ip", "netns", "exec", node.Name, bin,
		"--underlay=can-reach=10.10.100.1", "--ipip-datapath=ebpf",
		"--state-dir="+filepath.Join(dir, "state"), "--rt-protos-dir="+filepath.Join(dir, "protos"), "--ipam-socket="+filepath.Join(dir, "ipam.sock"),
		"--health-address=127.0.0.1:9099", "--metrics-address=127.0.0.1:9091")
	cmd.Env = append(os.Environ(), "NODENAME=learn-k8s-2", "KUBECONFIG="+kubeconfig)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})

	var code int
	var body string
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body = get(t, node, "127.0.0.1:9099", "/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "apiserver: the API server does not answer") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d %q; logs:\n%s", code, body, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("/readyz: %d\n%s", code, body)
	if code, body := get(t, node, "127.0.0.1:9099", "/livez"); code != http.StatusOK {
		t.Errorf("/livez = %d %q", code, body)
	}
	if code, body := get(t, node, "127.0.0.1:9091", "/metrics"); code != http.StatusOK || !strings.Contains(body, "calyx_agent_ready 0") {
		t.Errorf("/metrics = %d, want calyx_agent_ready 0 in:\n%s", code, body)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("exit after SIGTERM: %v", waitErr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10s of SIGTERM")
	}
	t.Logf("log:\n%s", logs.String())
	for _, want := range []string{
		`level=INFO msg="underlay found" node=learn-k8s-2 interface=ens160 address=10.10.100.208/24 mtu=1500 method="can-reach=10.10.100.1"`,
		`level=INFO msg="calyx-agent stopped; tunl0, routes and nftables stay in place" node=learn-k8s-2`,
		`level=ERROR msg="not ready" node=learn-k8s-2 check=apiserver reason="the API server does not answer: Get \"https://127.0.0.1:6443/version?timeout=30s\": dial tcp 127.0.0.1:6443: connect: connection refused; check KUBECONFIG and that kube-apiserver is up"`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if n := strings.Count(logs.String(), `check=apiserver reason=`); n != 1 {
		t.Errorf("the unreachable API server was logged %d times, want once", n)
	}
}

// get does an HTTP GET from inside the namespace.
func get(t testing.TB, ns *testnet.NS, addr, path string) (int, string) {
	t.Helper()
	var conn net.Conn
	if err := testnet.InNS(ns.Handle, func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, time.Second)
		return err
	}); err != nil {
		return 0, err.Error()
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}
