package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/calyx-net/calyx/ipam/socket"
)

// ioTimeout bounds reading a request and writing its answer; the verbs
// themselves are bounded by ipam.timeout.
const ioTimeout = 5 * time.Second

// Server answers calyx-ipam calls on a unix socket with a Handler: the
// node agent's resident IPAM.
type Server struct {
	Handler *Handler
	Logger  *slog.Logger
	// Observe, when set, sees every answered call: the agent's metrics.
	Observe func(req socket.Request, resp socket.Response, took time.Duration)
}

// Listen binds path for root only (whoever can talk to it can allocate
// and release the node's addresses), replacing the socket a killed agent
// left behind.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the IPAM socket's directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket: remove it or choose another --ipam-socket", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on the IPAM socket %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restricting the IPAM socket to root: %w", err)
	}
	return ln, nil
}

// Serve answers until ctx ends, then closes ln and waits for the calls in
// flight.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accepting on the IPAM socket: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			req, err := socket.ReadRequest(conn, ioTimeout)
			if err != nil {
				log.Warn("bad IPAM request", "err", err)
				return
			}
			start := time.Now()
			var accepted func()
			if req.Ack && req.Command == "ADD" {
				accepted = func() {
					// A caller that cannot take it fails the final write too.
					if err := socket.WriteResponse(conn, socket.Response{Accepted: true}, ioTimeout); err != nil {
						log.Debug("IPAM caller went away before the allocation", "containerID", req.ContainerID, "err", err)
					}
				}
			}
			resp := s.call(req, accepted)
			if s.Observe != nil {
				s.Observe(req, resp, time.Since(start))
			}
			if err := socket.WriteResponse(conn, resp, ioTimeout); err != nil {
				// The caller gave up or died; it retries through the
				// binary, which finds the same allocation by handle.
				log.Warn("IPAM caller went away", "command", req.Command, "containerID", req.ContainerID, "err", err)
			}
			if resp.Error != nil {
				log.Info("IPAM call failed", "command", req.Command, "containerID", req.ContainerID, "code", resp.Error.Code, "msg", resp.Error.Msg, "details", resp.Error.Details)
			} else {
				log.Debug("IPAM call", "command", req.Command, "containerID", req.ContainerID, "took", time.Since(start))
			}
		}()
	}
}

// call runs one verb as the binary would, its answer in wire form.
func (s *Server) call(req socket.Request, accepted func()) (resp socket.Response) {
	defer func() {
		// A bug in one call must not take the node's pod starts down with
		// the agent.
		if r := recover(); r != nil {
			resp = socket.Response{Error: types.NewError(types.ErrInternal, "calyx-ipam in the agent failed", fmt.Sprint(r))}
		}
	}()
	args := &skel.CmdArgs{
		ContainerID: req.ContainerID, Netns: req.Netns, IfName: req.IfName,
		Args: req.Args, Path: req.Path, StdinData: req.StdinData,
	}
	var err error
	switch req.Command {
	case "ADD":
		var r types.Result
		var version string
		if r, version, err = s.Handler.Add(args, accepted); err == nil {
			resp.Result, err = encodeResult(r, version)
		}
	case "DEL":
		err = s.Handler.Del(args)
	case "CHECK":
		err = s.Handler.Check(args)
	case "GC":
		err = s.Handler.GC(args)
	case "STATUS":
		err = s.Handler.Status(args)
	default:
		err = types.NewError(types.ErrInvalidEnvironmentVariables, "unknown CNI_COMMAND", fmt.Sprintf("%q: want ADD, DEL, CHECK, GC or STATUS", req.Command))
	}
	if err != nil {
		var e *types.Error
		if !errors.As(err, &e) {
			e = types.NewError(types.ErrInternal, err.Error(), "")
		}
		resp = socket.Response{Error: e}
	}
	return resp
}

func encodeResult(r types.Result, version string) (json.RawMessage, error) {
	v, err := r.GetAsVersion(version)
	if err != nil {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, "cannot express the result in the netconf's cniVersion", err.Error())
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding the result: %w", err)
	}
	return b, nil
}
