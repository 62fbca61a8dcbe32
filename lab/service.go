package lab

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ServiceSpec says what Service to make.
type ServiceSpec struct {
	Namespace, Name string
	Selector        map[string]string
	// Ports as PORT/PROTOCOL: 69/UDP.
	Ports []string
	// ClusterIP, if set, asks for this address (10.96.62.142).
	ClusterIP   string
	Annotations map[string]string
}

// ParsePort reads PORT/PROTOCOL (69/UDP; TCP when the protocol is left
// out).
func ParsePort(s string) (corev1.ServicePort, error) {
	num, proto, ok := strings.Cut(s, "/")
	if !ok {
		proto = "TCP"
	}
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return corev1.ServicePort{}, fmt.Errorf("port %q: want PORT/PROTOCOL, e.g. 69/UDP", s)
	}
	p := corev1.Protocol(strings.ToUpper(proto))
	switch p {
	case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
	default:
		return corev1.ServicePort{}, fmt.Errorf("port %q: protocol must be TCP, UDP or SCTP", s)
	}
	return corev1.ServicePort{
		Name:       strings.ToLower(string(p)) + "-" + num,
		Port:       int32(n),
		TargetPort: intstr.FromInt32(int32(n)),
		Protocol:   p,
	}, nil
}

// AddService creates a ClusterIP Service, as `kubectl expose` would, and
// returns it with its ClusterIP.
func (c *Client) AddService(ctx context.Context, spec ServiceSpec) (*corev1.Service, error) {
	if len(spec.Ports) == 0 {
		return nil, fmt.Errorf("service %s/%s: give at least one --port, e.g. 69/UDP", spec.Namespace, spec.Name)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: spec.Namespace, Name: spec.Name, Annotations: spec.Annotations},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			Selector:  spec.Selector,
			ClusterIP: spec.ClusterIP,
		},
	}
	for _, s := range spec.Ports {
		p, err := ParsePort(s)
		if err != nil {
			return nil, err
		}
		svc.Spec.Ports = append(svc.Spec.Ports, p)
	}
	if err := c.EnsureNamespace(ctx, spec.Namespace); err != nil {
		return nil, err
	}
	created, err := c.Kube.CoreV1().Services(spec.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating Service %s/%s (a ClusterIP must be free and inside %s): %w", spec.Namespace, spec.Name, ServiceCIDR, err)
	}
	return created, nil
}

// DelService deletes the Service NS/NAME.
func (c *Client) DelService(ctx context.Context, key string) error {
	ns, name, _ := strings.Cut(key, "/")
	if err := c.Kube.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting Service %s: %w", key, err)
	}
	return nil
}

// AnnotateService sets (or, with an empty value, removes) an annotation of
// the Service NS/NAME.
func (c *Client) AnnotateService(ctx context.Context, key, annotation, value string) error {
	ns, name, _ := strings.Cut(key, "/")
	var v any = value
	if value == "" {
		v = nil
	}
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:%s}}}`, annotation, jsonValue(v))
	if _, err := c.Kube.CoreV1().Services(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotating Service %s: %w", key, err)
	}
	return nil
}

func jsonValue(v any) string {
	if v == nil {
		return "null"
	}
	return strconv.Quote(v.(string))
}

// WaitEndpoints waits until the EndpointSlices of Service NS/NAME list n
// ready addresses, as kube-controller-manager writes them, and returns
// them.
func (c *Client) WaitEndpoints(ctx context.Context, key string, n int, timeout time.Duration) ([]string, error) {
	ns, name, _ := strings.Cut(key, "/")
	deadline := time.Now().Add(timeout)
	var ready []string
	for {
		slices, err := c.Kube.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + name})
		if err == nil {
			ready = ready[:0]
			for _, s := range slices.Items {
				for _, e := range s.Endpoints {
					if e.Conditions.Ready == nil || *e.Conditions.Ready {
						ready = append(ready, e.Addresses...)
					}
				}
			}
			if len(ready) == n {
				return ready, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("service %s has ready endpoints %v after %s, want %d: is kube-controller-manager running (its log is in the control-plane node's dir) and are the pods labelled for the selector?", key, ready, timeout, n)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// EnsureNamespace creates the namespace unless it exists.
func (c *Client) EnsureNamespace(ctx context.Context, name string) error {
	_, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}
