// Command calyxctl shows calyx's view of a cluster: IPAM usage and
// problems, nodes, a node's expected against actual routes, and the path a
// packet takes between two pods. Installed as kubectl-calyx it is also
// `kubectl calyx …`.
//
// Exit status: 0 when all is well, 1 when check, routes or trace find a
// problem, 2 on a usage error or when the command cannot run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/calyx-net/calyx/calyxctl"
)

const usage = `usage: %[1]s [global flags] COMMAND [flags]

commands:
  ipam show [--blocks]      pools' size, used, free, blocks, and the nodes each selects;
                            with --blocks each block
  ipam check                what the IPAM garbage collector would free: addresses of
                            deleted pods, nodes or earlier sandboxes, blocks and
                            affinities of deleted nodes, empty blocks of disabled
                            pools, dangling handles; and duplicated handles (exit 1
                            if any)
  ipam release --ip ADDR [--force]
                            release one address: a leaked one, or with --force one a
                            live pod or node holds
  ipam release --from-report FILE
                            release what FILE (ipam check -o json) listed as leaked
                            and still is; say what it skipped and why
  nodes                     underlay IP, tunnel address, blocks, agent registration;
                            on a node, that node's agent /readyz (--health-address)
  routes [--node NAME]      on a node: the routes the datastore implies next to the
                            kernel's proto calyx routes (exit 1 on drift)
  trace NS/POD NS/POD       the hop-by-hop path between two pods;
                            -o FILE.svg draws it

global flags (accepted anywhere):
  --kubeconfig PATH         else $KUBECONFIG, else ~/.kube/config
  --context NAME            kubeconfig context
  -o, --output FORMAT       table (default), json or yaml; trace: also FILE.svg
`

// releaseFlags checks ipam release's flags before any API call: one
// address, or one report.
func releaseFlags(ip string, force bool, report string) (netip.Addr, error) {
	switch {
	case ip == "" && report == "":
		return netip.Addr{}, errors.New("ipam release needs --ip ADDR or --from-report FILE")
	case ip != "" && report != "":
		return netip.Addr{}, errors.New("ipam release takes --ip or --from-report, not both")
	case force && report != "":
		return netip.Addr{}, errors.New("--force goes with --ip only: a report lists leaks, which need no force")
	case report != "":
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("--ip %q is not an IPv4 address", ip)
	}
	return a, nil
}

// errFound is a finding, not a failure: exit status 1.
var errFound = errors.New("problems found")

type globals struct {
	kubeconfig, context, output string
}

func main() {
	name := filepath.Base(os.Args[0])
	if strings.HasPrefix(name, "kubectl-") {
		name = "kubectl " + strings.TrimPrefix(name, "kubectl-")
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, name, os.Args[1:], os.Stdout)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errFound):
		os.Exit(1)
	default:
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
}

// parse reads fs's flags wherever they are among args (flag stops at the
// first operand; kubectl users put -o last).
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var operands []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return operands, nil
		}
		operands = append(operands, args[0])
		args = args[1:]
	}
}

func flags(name string, g *globals) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&g.kubeconfig, "kubeconfig", g.kubeconfig, "kubeconfig file")
	fs.StringVar(&g.context, "context", g.context, "kubeconfig context")
	fs.StringVar(&g.output, "output", g.output, "table, json or yaml")
	fs.StringVar(&g.output, "o", g.output, "table, json or yaml")
	return fs
}

func run(ctx context.Context, name string, args []string, out io.Writer) error {
	g := &globals{output: calyxctl.Table}
	fs := flags(name, g)
	blocks := fs.Bool("blocks", false, "ipam show: each block too")
	node := fs.String("node", "", "routes: the node (default: the one whose address is local)")
	vethPrefix := fs.String("veth-prefix", "cali", "trace: the CNI plugin's host veth prefix")
	nic := fs.String("nic", "", "trace: the nodes' underlay interface name (ens160)")
	health := fs.String("health-address", calyxctl.DefaultHealthAddress, "nodes: the agent's /readyz address, asked on the node calyxctl runs on (empty: never)")
	ip := fs.String("ip", "", "ipam release: the address")
	force := fs.Bool("force", false, "ipam release --ip: even an address a live pod or node holds")
	report := fs.String("from-report", "", "ipam release: the output of ipam check -o json")
	help := fs.Bool("help", false, "")
	fs.BoolVar(help, "h", false, "")
	ops, err := parse(fs, args)
	if err != nil || *help || len(ops) == 0 {
		fmt.Fprintf(out, usage, name)
		if err != nil {
			return fmt.Errorf("%w (see the usage above)", err)
		}
		if *help {
			return nil
		}
		return fmt.Errorf("no command given")
	}
	svgPath := ""
	if strings.HasSuffix(g.output, ".svg") {
		if ops[0] != "trace" {
			return fmt.Errorf("-o %s: only trace draws diagrams; use -o table, json or yaml", g.output)
		}
		svgPath, g.output = g.output, calyxctl.Table
	}
	if err := calyxctl.CheckFormat(g.output); err != nil {
		return err
	}
	var addr netip.Addr
	if len(ops) > 1 && ops[0] == "ipam" && ops[1] == "release" {
		if addr, err = releaseFlags(*ip, *force, *report); err != nil {
			return err
		}
	}
	cfg, err := calyxctl.LoadConfig(g.kubeconfig, g.context)
	if err != nil {
		return err
	}
	c, err := calyxctl.NewClients(cfg)
	if err != nil {
		return err
	}
	want := func(n int, form string) error {
		if len(ops) != n {
			return fmt.Errorf("usage: %s %s", name, form)
		}
		return nil
	}
	found := func(n int, err error) error {
		if err == nil && n > 0 {
			return errFound
		}
		return err
	}
	switch ops[0] {
	case "ipam":
		if len(ops) < 2 {
			return fmt.Errorf("usage: %s ipam show [--blocks] | ipam check | ipam release", name)
		}
		switch ops[1] {
		case "show":
			if err := want(2, "ipam show [--blocks]"); err != nil {
				return err
			}
			return calyxctl.IPAMShow(ctx, c, out, g.output, *blocks)
		case "check":
			if err := want(2, "ipam check"); err != nil {
				return err
			}
			return found(calyxctl.IPAMCheck(ctx, c, out, g.output))
		case "release":
			if err := want(2, "ipam release --ip ADDR [--force] | ipam release --from-report FILE"); err != nil {
				return err
			}
			return calyxctl.IPAMRelease(ctx, c, out, g.output, addr, *force, *report)
		}
		return fmt.Errorf("unknown ipam command %q: use show, check or release", ops[1])
	case "nodes":
		if err := want(1, "nodes"); err != nil {
			return err
		}
		return calyxctl.Nodes(ctx, c, out, g.output, *health)
	case "routes":
		if err := want(1, "routes [--node NAME]"); err != nil {
			return err
		}
		return found(calyxctl.Routes(ctx, c, out, g.output, *node))
	case "trace":
		if err := want(3, "trace NAMESPACE/POD NAMESPACE/POD [-o FILE.svg]"); err != nil {
			return err
		}
		problem, err := calyxctl.TraceCommand(ctx, c, out, g.output, svgPath, ops[1], ops[2],
			calyxctl.TraceOptions{VethPrefix: *vethPrefix, NIC: *nic})
		if problem {
			return found(1, err)
		}
		return err
	}
	return fmt.Errorf("unknown command %q: %s --help lists them", ops[0], name)
}
