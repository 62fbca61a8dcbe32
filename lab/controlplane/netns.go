package controlplane

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/calyx-net/calyx/agent/nsexec"
)

// inNetNS runs fn on a thread switched into the network namespace at path
// (the caller's own when path is empty). Sockets opened and processes
// started by fn belong to that namespace for good.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return nsexec.RunAt(path, fn)
}

// dialIn returns a dialer whose connections start inside the namespace.
func dialIn(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return nsexec.Dialer(path)
}

// proxy forwards a listener on the caller's loopback into the namespace,
// so kubectl on the host reaches an API server that lives in a node's
// namespace without a route, link or rule in the host's own.
type proxy struct {
	l    net.Listener
	wg   sync.WaitGroup
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	to   string
}

func startProxy(netnsPath, to string) (*proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening on loopback for kubectl: %w", err)
	}
	p := &proxy{l: l, dial: dialIn(netnsPath), to: to}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			u, err := p.dial(context.Background(), "tcp", p.to)
			if err != nil {
				return
			}
			defer u.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(u, c); done <- struct{}{} }()
			go func() { io.Copy(c, u); done <- struct{}{} }()
			<-done
		}()
	}
}

func (p *proxy) close() {
	p.l.Close()
	p.wg.Wait()
}
