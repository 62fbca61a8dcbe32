package lab

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/calyx-net/calyx/lab/manifests"
)

// DemoOptions configure the reference scenario.
type DemoOptions struct {
	Lab Options
	// Keep leaves the lab up afterwards.
	Keep bool
	// OutDir receives clientNode.pcap and serverNode.pcap; default
	// $TMPDIR/calyx-demo, so that a checkout stays clean.
	OutDir string
	Out    io.Writer
}

// The reference scenario's names.
const (
	DemoServerPod  = "default/tftp-server"
	DemoClientPod  = "default/tftp-client"
	DemoServerNode = "learn-k8s-2"
	DemoClientNode = "learn-k8s-3"
	DemoFile       = "test.bin"
	DemoFileSize   = 2016 // 3 full 512-byte blocks and one of 480: 4 DATA, 4 ACK
	demoPackets    = 9    // 1 RRQ + 4 DATA + 4 ACK
	// DemoService and DemoClusterIP are the article's Service.
	DemoService   = "tftp-server"
	DemoClusterIP = "10.96.62.142"
)

// DemoContent is the file the server serves: bytes that show their offset,
// so a corrupted transfer is easy to spot.
func DemoContent() []byte {
	b := make([]byte, DemoFileSize)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// demo is the scenario under way.
type demo struct {
	l              *Lab
	c              *Client
	out            io.Writer
	server, client *PodState
	problems       []string
}

// Demo plays the reference scenario with real objects: the TFTP server as
// a Deployment on learn-k8s-2, the Service tftp-server, a client pod on
// learn-k8s-3, the download run with `kubectl exec` and captured on every
// hop. It returns an error when anything differs from what the
// architecture promises.
func Demo(ctx context.Context, opts DemoOptions) (err error) {
	out := opts.Out
	if out == nil {
		out = os.Stdout
	}
	opts.Lab.Progress = out
	if opts.OutDir == "" {
		opts.OutDir = filepath.Join(os.TempDir(), "calyx-demo")
	}
	begin := time.Now()
	l, err := Up(ctx, opts.Lab)
	if err != nil {
		return err
	}
	defer func() {
		if opts.Keep && err == nil {
			fmt.Fprintf(out, "\nthe lab stays up (--keep): kubectl --kubeconfig %s get pods -A -o wide; calyx-lab down when done\n", l.Kubeconfig())
			return
		}
		l.Down()
	}()
	d := &demo{l: l, c: l.Client(), out: out}
	if err := d.deploy(ctx); err != nil {
		return err
	}
	if err := d.showRoutes(ctx); err != nil {
		return err
	}
	caps, err := d.download(ctx)
	if err != nil {
		return err
	}
	if err := d.viaService(ctx); err != nil {
		return err
	}
	if err := d.writePcaps(caps, opts.OutDir); err != nil {
		return err
	}
	if len(d.problems) > 0 {
		return errors.New("the demo did not go as the architecture says:\n  " + strings.Join(d.problems, "\n  "))
	}
	fmt.Fprintf(out, "\ndemo complete in %s: every hop as ARCHITECTURE.md describes\n", time.Since(begin).Round(100*time.Millisecond))
	return nil
}

func (d *demo) problem(format string, args ...any) {
	d.problems = append(d.problems, fmt.Sprintf(format, args...))
}

// deploy applies the article's objects and waits for the server's and the
// client's pods, then shows every pod of the cluster, as a user would.
func (d *demo) deploy(ctx context.Context) error {
	var m bytes.Buffer
	err := manifests.TFTP.Execute(&m, map[string]string{
		"Content": base64.StdEncoding.EncodeToString(DemoContent()), "Image": Toolbox,
		"ServerNode": DemoServerNode, "ClientNode": DemoClientNode, "ClusterIP": DemoClusterIP,
		"ServerScript": TFTPServerScript,
	})
	if err != nil {
		return err
	}
	return d.l.step(fmt.Sprintf("the article's objects: Deployment tftp-server on %s serving %s (%d bytes), Service %s %s:69/UDP, pod tftp-client on %s", DemoServerNode, DemoFile, DemoFileSize, DemoService, DemoClusterIP, DemoClientNode), func() error {
		if _, err := d.c.Kubectl(ctx, &m, "apply", "-f", "-"); err != nil {
			return err
		}
		if _, err := d.c.Kubectl(ctx, nil, "rollout", "status", "deployment/tftp-server", "--timeout=2m"); err != nil {
			return err
		}
		if d.client, err = d.c.WaitPod(ctx, DemoClientPod, 2*time.Minute); err != nil {
			return err
		}
		if d.server, err = d.serverPod(ctx); err != nil {
			return err
		}
		pods, err := d.c.Kubectl(ctx, nil, "get", "pods", "-A", "-o", "wide")
		fmt.Fprintf(d.out, "\n$ kubectl get pods -A -o wide\n%s\n", pods)
		return err
	})
}

// serverPod is the running pod of the tftp-server Deployment.
func (d *demo) serverPod(ctx context.Context) (*PodState, error) {
	name, err := d.c.Kubectl(ctx, nil, "get", "pods", "-l", "app=tftp-server", "-o", "jsonpath={.items[0].metadata.name}")
	if err != nil {
		return nil, err
	}
	return d.c.Pod(ctx, "default/"+strings.TrimSpace(name))
}

// showRoutes prints both nodes' routing tables.
func (d *demo) showRoutes(ctx context.Context) error {
	for _, n := range []struct{ node, role string }{{DemoClientNode, "client"}, {DemoServerNode, "server"}} {
		routes, err := d.c.Output(ctx, n.node, "ip", "route")
		if err != nil {
			return err
		}
		fmt.Fprintf(d.out, "$ ip route   # on %s, the %s's node\n%s\n", n.node, n.role, routes)
	}
	return nil
}
