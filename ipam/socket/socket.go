// Package socket carries calyx-ipam's CNI calls from the calyx plugin to
// the node agent over a unix socket. The agent keeps a warm API connection
// and an informer cache of the blocks, so an allocation costs one write
// instead of a process start, a TLS handshake and six round trips.
//
// This package is the client and the wire format only: the calyx plugin
// imports it, and it must stay free of client-go, whose initialisation
// alone costs a CNI call ~10 ms.
package socket

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// DefaultPath is where the agent listens on a real node.
const DefaultPath = "/var/run/calyx/ipam.sock"

// maxMessage bounds what either side reads: a netconf with a prevResult is
// a few kilobytes.
const maxMessage = 1 << 20

// Request is one CNI invocation of calyx-ipam, as its environment and
// stdin would carry it.
type Request struct {
	Command     string `json:"command"`
	ContainerID string `json:"containerID"`
	Netns       string `json:"netns"`
	IfName      string `json:"ifName"`
	Args        string `json:"args"`
	Path        string `json:"path"`
	StdinData   []byte `json:"stdin"`
	// Ack asks, for an ADD, for an Accepted answer as soon as the request
	// is sound, before the allocation's write. An agent that predates it
	// ignores it and sends the result alone.
	Ack bool `json:"ack,omitempty"`
}

// Response is what calyx-ipam would have printed: a result in the
// netconf's cniVersion, or a CNI error.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *types.Error    `json:"error,omitempty"`
	// Accepted is the interim answer an Ack asks for; the result or error
	// follows on the same connection.
	Accepted bool `json:"accepted,omitempty"`
}

// ErrUnavailable marks a call that did not get an answer from the agent:
// the caller runs the calyx-ipam binary instead. Every verb is safe to
// repeat that way, since allocation is idempotent per handle.
var ErrUnavailable = errors.New("the calyx agent's IPAM socket did not answer")

// Call sends req to the agent at path and returns the result bytes, or the
// agent's CNI error as a *types.Error.
func Call(ctx context.Context, path string, req Request) (json.RawMessage, error) {
	return CallAccepted(ctx, path, req, nil)
}

// CallAccepted is Call with an Ack: accepted runs when the agent says the
// request is sound, before its result comes (if it ever says so: an older
// agent, or a request it will refuse, does not).
func CallAccepted(ctx context.Context, path string, req Request, accepted func()) (json.RawMessage, error) {
	req.Ack = accepted != nil
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// The request ends with a half-close, so neither side needs framing.
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("%w: sending: %v", ErrUnavailable, err)
	}
	if err := conn.(*net.UnixConn).CloseWrite(); err != nil {
		return nil, fmt.Errorf("%w: sending: %v", ErrUnavailable, err)
	}
	dec := json.NewDecoder(io.LimitReader(conn, maxMessage))
	var resp Response
	for {
		resp = Response{}
		if err := dec.Decode(&resp); err != nil {
			return nil, fmt.Errorf("%w: reading the answer: %v", ErrUnavailable, err)
		}
		if !resp.Accepted {
			break
		}
		if accepted != nil {
			accepted()
			accepted = nil
		}
	}
	if resp.Error != nil {
		return nil, resp.Error
	}
	return resp.Result, nil
}

// ReadRequest reads one request from a server's connection.
func ReadRequest(conn net.Conn, timeout time.Duration) (Request, error) {
	conn.SetReadDeadline(time.Now().Add(timeout))
	var req Request
	if err := json.NewDecoder(io.LimitReader(conn, maxMessage)).Decode(&req); err != nil {
		return req, fmt.Errorf("reading an IPAM request: %w", err)
	}
	return req, nil
}

// WriteResponse answers a request.
func WriteResponse(conn net.Conn, resp Response, timeout time.Duration) error {
	conn.SetWriteDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(conn).Encode(resp); err != nil {
		return fmt.Errorf("answering an IPAM request: %w", err)
	}
	return nil
}
