package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/node"
)

// common are the flags every command takes.
type common struct {
	dir, binDir string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.dir, "dir", lab.DefaultDir, "where the lab keeps its files")
	exe, _ := os.Executable()
	fs.StringVar(&c.binDir, "bin-dir", filepath.Dir(exe), "directory with calyx-agent and the CNI binaries (make build puts them in bin/)")
}

func requireRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab creates network namespaces and must run as root: run it with sudo")
	}
	return nil
}

// readyMarker is the line the supervisor prints once the lab is up.
const readyMarker = "calyx-lab is up; kubeconfig: "

// cmdUp starts the supervisor in the background and follows its progress
// until the lab is ready. The supervisor holds etcd, kube-apiserver, the
// agents and the kubectl proxy for as long as the lab lives.
func cmdUp(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	var c common
	c.register(fs)
	workers := fs.Int("workers", 2, "number of worker nodes")
	datapath := fs.String("ipip-datapath", "auto", "calyx-node's tunl0 datapath: auto, kernel or ebpf")
	var runtimes runtimeFlag
	fs.Var(&runtimes, "runtime", "NODE=containerd-1.6|containerd-2: a node's container runtime (repeatable; default 1.6 on learn-k8s-2, 2 elsewhere)")
	kernelNode := fs.Bool("kernel-node", false, "add learn-k8s-4, a qemu guest with Debian's kernel (which has ipip): calyx-agent picks the kernel's datapath there")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := requireRoot(); err != nil {
		return err
	}
	if s, err := lab.ReadState(c.dir); err == nil {
		if s.SupervisorPID > 0 && syscall.Kill(s.SupervisorPID, 0) == nil {
			fmt.Printf("the lab is already up.\n%s%s\n", readyMarker, s.Kubeconfig)
			return nil
		}
		fmt.Println("a lab whose supervisor died was left behind: cleaning it up first")
		if err := lab.Down(c.dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(os.TempDir(), "calyx-lab-supervisor.log")
	log, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer log.Close()
	self, _ := os.Executable()
	supArgs := []string{"supervise", "--dir", c.dir, "--bin-dir", c.binDir, "--workers", fmt.Sprint(*workers), "--ipip-datapath", *datapath, fmt.Sprintf("--kernel-node=%v", *kernelNode)}
	for n, r := range runtimes {
		supArgs = append(supArgs, "--runtime", n+"="+string(r))
	}
	sup := exec.Command(self, supArgs...)
	sup.Stdout, sup.Stderr = log, log
	sup.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sup.Start(); err != nil {
		return fmt.Errorf("starting the supervisor: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sup.Wait() }()
	return follow(logPath, exited)
}

// follow prints the supervisor's log until it says the lab is ready, or
// the supervisor exits.
func follow(path string, exited <-chan error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var partial string
	for {
		line, err := r.ReadString('\n')
		partial += line
		if err == io.EOF {
			select {
			case e := <-exited:
				rest, _ := io.ReadAll(r)
				fmt.Print(partial + string(rest))
				return fmt.Errorf("the lab's supervisor exited (%v); its log is %s", e, path)
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		fmt.Print(partial)
		if strings.HasPrefix(partial, readyMarker) {
			return nil
		}
		partial = ""
	}
}

func cmdSupervise(args []string) error {
	fs := flag.NewFlagSet("supervise", flag.ContinueOnError)
	var c common
	c.register(fs)
	workers := fs.Int("workers", 2, "")
	datapath := fs.String("ipip-datapath", "auto", "")
	var runtimes runtimeFlag
	fs.Var(&runtimes, "runtime", "")
	kernelNode := fs.Bool("kernel-node", false, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	l, err := lab.Up(ctx, lab.Options{
		Dir: c.dir, Workers: *workers, BinDir: c.binDir, Datapath: *datapath, Runtimes: runtimes, KernelNode: *kernelNode, Progress: os.Stdout,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	fmt.Printf("%s%s\n", readyMarker, l.Kubeconfig())
	<-ctx.Done()
	fmt.Println("stopping the lab")
	return l.Down()
}

func cmdDown(args []string) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	var c common
	c.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := requireRoot(); err != nil {
		return err
	}
	begin := time.Now()
	if err := lab.Down(c.dir); err != nil {
		return err
	}
	fmt.Printf("the lab is down (%s): no namespace, process or file of it is left\n", time.Since(begin).Round(time.Millisecond))
	return nil
}

func cmdStatus(args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var c common
	c.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	s, err := lab.ReadState(c.dir)
	if err != nil {
		return err
	}
	client, err := lab.NewClient(c.dir)
	if err != nil {
		return err
	}
	ctx := context.Background()
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "NODE\tUNDERLAY IP\tRUNTIME\tCALYX-AGENT\tKUBE-PROXY\n")
	for _, n := range s.Nodes {
		ready, msg := lab.AgentReady(ctx, n.NetNS)
		state := "ready"
		if !ready {
			state = "not ready: " + msg
		}
		proxy := "not answering"
		if mode, err := lab.ProxyMode(ctx, n.NetNS); err == nil {
			proxy = mode + " mode"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.IP, n.Runtime, state, proxy)
	}
	w.Flush()
	pods, err := client.Kubectl(ctx, nil, "get", "pods", "-A", "-o", "wide")
	fmt.Printf("\n$ kubectl get pods -A -o wide\n%s\nkubeconfig: %s\n", pods, s.Kubeconfig)
	return err
}

func cmdPod(args []string) error {
	if len(args) < 2 || (args[0] != "add" && args[0] != "del") {
		return errors.New("usage: calyx-lab pod add NS/NAME --node NODE [--label k=v] [--image IMAGE] [-- COMMAND…] | pod del NS/NAME")
	}
	verb, key := args[0], args[1]
	ns, name, ok := strings.Cut(key, "/")
	if !ok {
		return fmt.Errorf("%q: give the pod as NAMESPACE/NAME", key)
	}
	fs := flag.NewFlagSet("pod "+verb, flag.ContinueOnError)
	var c common
	c.register(fs)
	node := fs.String("node", "", "the node to run the pod on")
	var labels labelFlag
	fs.Var(&labels, "label", "a pod label k=v (repeatable)")
	image := fs.String("image", lab.Toolbox, "the pod's image (it must be on the node: nothing can be pulled)")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	if err := requireRoot(); err != nil {
		return err
	}
	client, err := lab.NewClient(c.dir)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if verb == "del" {
		if err := client.DelPod(ctx, key); err != nil {
			return err
		}
		fmt.Printf("pod %s deleted\n", key)
		return nil
	}
	if *node == "" {
		return errors.New("--node is required: the node to run the pod on (calyx-lab status lists them)")
	}
	p, err := client.AddPod(ctx, lab.PodSpec{Namespace: ns, Name: name, Node: *node, Labels: labels, Image: *image, Command: fs.Args()})
	if err != nil {
		return err
	}
	fmt.Printf("%s on %s, host side %s\n", p.IP, p.Node, p.HostIface)
	return nil
}

type labelFlag map[string]string

func (l *labelFlag) String() string { return fmt.Sprint(map[string]string(*l)) }
func (l *labelFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok {
		return fmt.Errorf("label %q: want k=v", v)
	}
	if *l == nil {
		*l = labelFlag{}
	}
	(*l)[k] = val
	return nil
}

func cmdExec(args []string) {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	var c common
	c.register(fs)
	if len(args) < 1 {
		fmt.Fprintln(os.Stderr, "usage: calyx-lab exec NODE|NS/NAME -- COMMAND…")
		os.Exit(2)
	}
	target := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		os.Exit(2)
	}
	client, err := lab.NewClient(c.dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "calyx-lab exec: %v\n", err)
		os.Exit(1)
	}
	cmd, err := client.Command(context.Background(), target, fs.Args()...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "calyx-lab exec: %v\n", err)
		os.Exit(2)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintf(os.Stderr, "calyx-lab exec: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func cmdService(args []string) error {
	if len(args) < 2 || (args[0] != "add" && args[0] != "del") {
		return errors.New("usage: calyx-lab service add NS/NAME --selector k=v --port 69/UDP [--cluster-ip IP] [--annotation k=v] | service del NS/NAME")
	}
	verb, key := args[0], args[1]
	ns, name, ok := strings.Cut(key, "/")
	if !ok {
		return fmt.Errorf("%q: give the service as NAMESPACE/NAME", key)
	}
	fs := flag.NewFlagSet("service "+verb, flag.ContinueOnError)
	var c common
	c.register(fs)
	var selector, annotations labelFlag
	var ports portsFlag
	fs.Var(&selector, "selector", "a selector label k=v (repeatable)")
	fs.Var(&ports, "port", "a port as PORT/PROTOCOL, e.g. 69/UDP (repeatable)")
	fs.Var(&annotations, "annotation", "an annotation k=v (repeatable), e.g. calyx.dev/conntrack-helper=tftp")
	clusterIP := fs.String("cluster-ip", "", "the ClusterIP to ask for (default: allocated)")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	client, err := lab.NewClient(c.dir)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if verb == "del" {
		if err := client.DelService(ctx, key); err != nil {
			return err
		}
		fmt.Printf("service %s deleted\n", key)
		return nil
	}
	if len(selector) == 0 {
		return errors.New("--selector is required: the pods' label k=v, as given to `calyx-lab pod add --label`")
	}
	svc, err := client.AddService(ctx, lab.ServiceSpec{Namespace: ns, Name: name, Selector: selector, Ports: ports, ClusterIP: *clusterIP, Annotations: annotations})
	if err != nil {
		return err
	}
	fmt.Println(svc.Spec.ClusterIP)
	return nil
}

type portsFlag []string

func (p *portsFlag) String() string { return strings.Join(*p, ",") }
func (p *portsFlag) Set(v string) error {
	if _, err := lab.ParsePort(v); err != nil {
		return err
	}
	*p = append(*p, v)
	return nil
}

type runtimeFlag map[string]node.Runtime

func (r *runtimeFlag) String() string { return fmt.Sprint(map[string]node.Runtime(*r)) }
func (r *runtimeFlag) Set(v string) error {
	n, rt, ok := strings.Cut(v, "=")
	if !ok {
		return fmt.Errorf("runtime %q: want NODE=RUNTIME, e.g. learn-k8s-3=containerd-1.6", v)
	}
	parsed, err := node.ParseRuntime(rt)
	if err != nil {
		return err
	}
	if *r == nil {
		*r = runtimeFlag{}
	}
	(*r)[n] = parsed
	return nil
}

// cmdKubectl runs the real kubectl against the lab.
func cmdKubectl(args []string) {
	client, err := lab.NewClient(lab.DefaultDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "calyx-lab kubectl: %v\n", err)
		os.Exit(1)
	}
	cmd, err := client.KubectlCommand(context.Background(), args...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "calyx-lab kubectl: %v\n", err)
		os.Exit(1)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintf(os.Stderr, "calyx-lab kubectl: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}
