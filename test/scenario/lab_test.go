package scenario

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/calyx-net/calyx/lab"
)

// labCluster is Cluster on the lab: real kubelets and containerd in
// network namespaces, calyx installed from deploy/calyx.yaml.
type labCluster struct {
	l   *lab.Lab
	cfg *rest.Config
}

func (c *labCluster) Config() *rest.Config             { return c.cfg }
func (c *labCluster) Workers() (server, client string) { return "learn-k8s-2", "learn-k8s-3" }

func (c *labCluster) RunPod(ctx context.Context, name, node string) (netip.Addr, error) {
	p, err := c.l.Client().AddPod(ctx, lab.PodSpec{Namespace: "default", Name: name, Node: node, Command: []string{"sleep", "infinity"}})
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.ParseAddr(p.IP)
}

func (c *labCluster) ExecPod(ctx context.Context, pod string, argv ...string) (string, error) {
	return c.l.Client().Exec(ctx, "default/"+pod, argv...)
}

func (c *labCluster) Routes(ctx context.Context, node string) (string, error) {
	return c.l.Client().Output(ctx, node, "ip", "route")
}

func TestOnLab(t *testing.T) {
	ctx := context.Background()
	bin := t.TempDir()
	root, _ := filepath.Abs(filepath.Join("..", ".."))
	if err := lab.BuildBinaries(ctx, root, bin, testWriter{t}); err != nil {
		t.Fatal(err)
	}
	// Other test packages bring labs up too: wait for theirs to go, and
	// again if one came up in between.
	var l *lab.Lab
	var err error
	for deadline := time.Now().Add(5 * time.Minute); ; {
		waitNoLab(t, time.Until(deadline))
		l, err = lab.Up(ctx, lab.Options{Dir: filepath.Join(t.TempDir(), "lab"), BinDir: bin, Progress: testWriter{t}})
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "another lab is up") || time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	cfg, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	Run(t, &labCluster{l: l, cfg: cfg})
}

// waitNoLab waits while another lab (another test's) is up: the lab's
// namespace names are fixed, one lab per machine.
func waitNoLab(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := exec.Command("ip", "netns", "list").CombinedOutput()
		if err != nil {
			t.Fatalf("ip netns list: %v\n%s", err, out)
		}
		var found []string
		for _, l := range strings.Split(string(out), "\n") {
			name, _, _ := strings.Cut(l, " ")
			if strings.HasPrefix(name, "learn-k8s-") || strings.HasPrefix(name, "calyx-lab-") {
				found = append(found, name)
			}
		}
		if len(found) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a lab is up (%v) and did not go within %s: run `calyx-lab down`", found, timeout)
		}
		time.Sleep(3 * time.Second)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (c *labCluster) Capture(ctx context.Context, node, filter string, count int, during func()) (string, error) {
	cmd, err := c.l.Client().Command(ctx, node, "timeout", "20", "tcpdump", "-nli", lab.NICName, "-c", strconv.Itoa(count), filter)
	if err != nil {
		return "", err
	}
	return CaptureWith(cmd, during)
}
