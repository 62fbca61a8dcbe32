package scenario

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/labtest"
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
	bin, err := labtest.Binaries("calyx-scenario-bin-", labtest.Log(t))
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(bin)
	l, err := lab.Up(ctx, lab.Options{Dir: filepath.Join(t.TempDir(), "lab"), BinDir: bin, WaitForSlot: labtest.SlotWait, Progress: labtest.Log(t)})
	if err != nil {
		t.Fatal(err)
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

func (c *labCluster) Capture(ctx context.Context, node, filter string, count int, during func()) (string, error) {
	cmd, err := c.l.Client().Command(ctx, node, "timeout", "20", "tcpdump", "-nli", lab.NICName, "-c", strconv.Itoa(count), filter)
	if err != nil {
		return "", err
	}
	return CaptureWith(cmd, during)
}
