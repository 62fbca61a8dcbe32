// Package poolinit creates calyx's default IPPool from the manifest's
// ConfigMap, run by the calyx-ippool-init Job of deploy/calyx.yaml. The
// pool cannot be a plain object of that manifest: on a fresh cluster one
// `kubectl apply` maps every object before the CRDs it creates are
// served, and fails on the IPPool ("no matches for kind IPPool").
package poolinit

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	calyxclient "github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
)

// Parse reads one IPPool in YAML.
func Parse(b []byte) (*v1alpha1.IPPool, error) {
	var p v1alpha1.IPPool
	if err := yaml.UnmarshalStrict(b, &p); err != nil {
		return nil, fmt.Errorf("parsing the IPPool: %w (fix the calyx-default-ippool ConfigMap)", err)
	}
	if p.Kind != "IPPool" || p.Name == "" {
		return nil, fmt.Errorf("want an IPPool with a name, got kind %q name %q (fix the calyx-default-ippool ConfigMap)", p.Kind, p.Name)
	}
	return &p, nil
}

// Create creates the pool unless a pool of that name exists, which it
// never changes (its cidr is immutable; edit it with kubectl). It waits,
// until ctx ends, for the IPPool CRD to be served.
func Create(ctx context.Context, log *slog.Logger, cs calyxclient.Interface, p *v1alpha1.IPPool) error {
	for {
		_, err := cs.CalyxV1alpha1().IPPools().Create(ctx, p, metav1.CreateOptions{FieldManager: "calyx-ippool-init"})
		switch {
		case err == nil:
			log.Info("IPPool created", "name", p.Name, "cidr", p.Spec.CIDR)
			return nil
		case apierrors.IsAlreadyExists(err):
			log.Info("IPPool exists; left as it is", "name", p.Name)
			return nil
		case apierrors.IsNotFound(err):
			// The CRD applied with it is not served yet.
			log.Info("waiting for the IPPool CRD to be served", "err", err)
		default:
			return fmt.Errorf("creating IPPool %s: %w", p.Name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the IPPool CRD is not served: %w; is ippools.calyx.dev installed (kubectl get crd)?", ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
