package cniplugin

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/types/create"

	"github.com/calyx-net/calyx/ipam/socket"
)

// agentIPAMType is the IPAM plugin the node agent also serves in-process.
const agentIPAMType = "calyx-ipam"

// agentSocket is the socket of ipam.agent_socket, when the IPAM is
// calyx-ipam and the conflist names one.
func agentSocket(conf *NetConf, stdin []byte) string {
	if conf.IPAM.Type != agentIPAMType {
		return ""
	}
	var c struct {
		IPAM struct {
			AgentSocket string `json:"agent_socket"`
		} `json:"ipam"`
	}
	if json.Unmarshal(stdin, &c) != nil {
		return ""
	}
	return c.IPAM.AgentSocket
}

// delegate runs one IPAM verb: through the node agent's socket when it
// answers, which saves a process start and the API round trips a cold
// client makes; else by executing the IPAM binary, as CNI delegation
// does. The two are the same code (ipam/plugin) on the same datastore,
// and every verb is idempotent per handle, so falling back after a call
// that may have reached the agent is safe.
func delegate(ctx context.Context, command string, conf *NetConf, args *skel.CmdArgs) (types.Result, error) {
	return delegateAccepted(ctx, command, conf, args, nil)
}

// delegateAccepted is delegate with the agent's interim answer: accepted
// runs if the agent finds the request sound before it allocates. The IPAM
// binary never calls it.
func delegateAccepted(ctx context.Context, command string, conf *NetConf, args *skel.CmdArgs, accepted func()) (types.Result, error) {
	if path := agentSocket(conf, args.StdinData); path != "" {
		raw, err := socket.CallAccepted(ctx, path, socket.Request{
			Command: command, ContainerID: args.ContainerID, Netns: args.Netns,
			IfName: args.IfName, Args: args.Args, Path: args.Path, StdinData: args.StdinData,
		}, accepted)
		switch {
		case err == nil && command == "ADD":
			return create.CreateFromBytes(raw)
		case err == nil:
			return nil, nil
		case !errors.Is(err, socket.ErrUnavailable):
			return nil, err
		}
		slog.Debug("the agent's IPAM socket did not answer; running the IPAM binary", "socket", path, "err", err)
	}
	switch command {
	case "ADD":
		return invoke.DelegateAdd(ctx, conf.IPAM.Type, args.StdinData, nil)
	case "DEL":
		return nil, invoke.DelegateDel(ctx, conf.IPAM.Type, args.StdinData, nil)
	case "CHECK":
		return nil, invoke.DelegateCheck(ctx, conf.IPAM.Type, args.StdinData, nil)
	case "STATUS":
		return nil, invoke.DelegateStatus(ctx, conf.IPAM.Type, args.StdinData, nil)
	case "GC":
		return nil, invoke.DelegateGC(ctx, conf.IPAM.Type, args.StdinData, nil)
	}
	return nil, types.NewError(types.ErrInternal, "unknown IPAM verb "+command, "")
}
