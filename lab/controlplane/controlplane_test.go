package controlplane_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/calyx-net/calyx/lab/controlplane"
)

// TestStartStop starts two control planes side by side (free ports, no
// collisions), uses each through its kubeconfig file as kubectl would, checks
// RBAC is enforced, and checks that Stop leaves no process and no file.
func TestStartStop(t *testing.T) {
	ctx := context.Background()
	var wg sync.WaitGroup
	cps := make([]*controlplane.ControlPlane, 2)
	errs := make([]error, 2)
	for i := range cps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			begin := time.Now()
			cps[i], errs[i] = controlplane.Start(ctx, controlplane.Options{})
			t.Logf("control plane %d started in %s", i, time.Since(begin).Round(time.Millisecond))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("control plane %d: %v", i, err)
		}
		defer cps[i].Stop()
	}
	if cps[0].URL == cps[1].URL {
		t.Fatalf("both control planes serve %s", cps[0].URL)
	}

	for i, cp := range cps {
		cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
		if err != nil {
			t.Fatalf("control plane %d: loading its kubeconfig: %v", i, err)
		}
		cs := kubernetes.NewForConfigOrDie(cfg)
		if _, err := cs.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
			t.Errorf("control plane %d: admin from kubeconfig cannot read namespace default: %v", i, err)
		}
		if cp.Version != "v1.37.2" {
			t.Errorf("control plane %d: /version says %q, want the pinned v1.37.2", i, cp.Version)
		}
		// RBAC on: a service account without bindings may not list secrets.
		review, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:               "system:serviceaccount:kube-system:nobody",
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "list", Resource: "secrets"},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if review.Status.Allowed {
			t.Errorf("control plane %d: an unbound service account may list secrets: RBAC is off", i)
		}
	}

	for i, cp := range cps {
		pid := pidOf(t, cp)
		dir := cp.Dir
		if err := cp.Stop(); err != nil {
			t.Errorf("control plane %d: stop: %v", i, err)
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("control plane %d: kube-apiserver (pid %d) still running after Stop", i, pid)
		}
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("control plane %d: %s still there after Stop (err %v)", i, dir, err)
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("control plane %d: a second Stop: %v", i, err)
		}
	}
}

func pidOf(t *testing.T, cp *controlplane.ControlPlane) int {
	t.Helper()
	pid := cp.APIServerPID()
	if pid <= 0 {
		t.Fatal("no kube-apiserver pid")
	}
	return pid
}

// TestInNetNS runs the control plane inside a network namespace, as the lab's
// control-plane node does: the API server answers there, and kubectl on the
// host reaches it through the kubeconfig's loopback proxy.
func TestInNetNS(t *testing.T) {
	name := fmt.Sprintf("calyx-cptest-%d", os.Getpid())
	target, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("creating netns %s (needs root): %v", name, err)
	}
	target.Close()
	t.Cleanup(func() { netns.DeleteNamed(name) })
	path := "/var/run/netns/" + name
	err = ns.WithNetNSPath(path, func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// This kernel has no dummy driver: a veth pair stands in for a NIC.
		d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ens160"}, PeerName: "ens160-peer"}
		if err := netlink.LinkAdd(d); err != nil {
			return err
		}
		peer, err := netlink.LinkByName("ens160-peer")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("10.10.100.207/24")
		if err := netlink.AddrAdd(d, addr); err != nil {
			return err
		}
		return netlink.LinkSetUp(d)
	})
	if err != nil {
		t.Fatal(err)
	}

	cp, err := controlplane.Start(context.Background(), controlplane.Options{
		NetNS: path, BindAddress: "0.0.0.0", AdvertiseAddress: "10.10.100.207", Port: 6443,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	if cp.URL != "https://10.10.100.207:6443" {
		t.Errorf("URL %s, want https://10.10.100.207:6443", cp.URL)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	if _, err := cs.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
		t.Fatalf("through the host kubeconfig: %v", err)
	}
	// The API server publishes its advertised address shortly after start.
	var addrs []string
	for deadline := time.Now().Add(15 * time.Second); len(addrs) == 0 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		slices, err := cs.DiscoveryV1().EndpointSlices("default").List(context.Background(), metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=kubernetes"})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range slices.Items {
			for _, ep := range s.Endpoints {
				addrs = append(addrs, ep.Addresses...)
			}
		}
	}
	if len(addrs) != 1 || addrs[0] != "10.10.100.207" {
		t.Errorf("the kubernetes Service points at %v, want the advertised 10.10.100.207", addrs)
	}
}
