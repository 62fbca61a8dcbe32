package controlplane_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

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
