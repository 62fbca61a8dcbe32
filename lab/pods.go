package lab

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/calyx-net/calyx/agent/nsexec"
	cniplugin "github.com/calyx-net/calyx/cni-plugin"
	"github.com/calyx-net/calyx/lab/images"
	"github.com/calyx-net/calyx/lab/node"
)

// Toolbox is the image of the lab's pods unless told otherwise: busybox
// (sh, ping, tftp, nc, wget, …) and tftpd-hpa.
const Toolbox = images.ToolboxTag

// PodSpec says what pod to make.
type PodSpec struct {
	Namespace, Name, Node string
	Labels                map[string]string
	// Image defaults to Toolbox, whose default command sleeps.
	Image string
	// Command, if any, replaces the image's.
	Command []string
}

// PodState is a running pod as the lab found it.
type PodState struct {
	Namespace, Name, Node string
	IP                    string
	// HostIface is the host side of the pod's veth, cali….
	HostIface string
	// NetNS is the host's path to the pod's network namespace.
	NetNS string
}

// Key is the pod's NAMESPACE/NAME.
func (p PodState) Key() string { return p.Namespace + "/" + p.Name }

// PodNetNS is the host's path to the network namespace of the pod
// NAMESPACE/NAME on its node.
func (c *Client) PodNetNS(ctx context.Context, key string) (string, error) {
	p, err := c.Pod(ctx, key)
	if err != nil {
		return "", err
	}
	return p.NetNS, nil
}

// Client is what the lab's commands that run outside the supervisor need:
// the lab's directory and an API client through the host kubeconfig.
type Client struct {
	Dir  string
	Kube kubernetes.Interface
}

// NewClient connects to the lab in dir.
func NewClient(dir string) (*Client, error) {
	if dir == "" {
		dir = DefaultDir
	}
	s, err := ReadState(dir)
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading the lab's kubeconfig: %w", err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Client{Dir: dir, Kube: kube}, nil
}

// Client returns a Client of this lab.
func (l *Lab) Client() *Client { return &Client{Dir: l.opts.Dir, Kube: l.Kube} }

// AddPod creates a Pod bound to the node by its hostname label, as a user
// would, and waits until the kubelet runs it and reports it Ready.
func (c *Client) AddPod(ctx context.Context, spec PodSpec) (*PodState, error) {
	for what, v := range map[string]string{"namespace": spec.Namespace, "pod name": spec.Name} {
		if errs := validation.IsDNS1123Label(v); len(errs) > 0 {
			return nil, fmt.Errorf("%s %q: %s", what, v, strings.Join(errs, "; "))
		}
	}
	return c.CreatePod(ctx, PodObject(spec))
}

// CreatePod creates pod (its namespace too, if missing) and waits until
// the kubelet runs it and reports it Ready.
func (c *Client) CreatePod(ctx context.Context, pod *corev1.Pod) (*PodState, error) {
	if err := c.EnsureNamespace(ctx, pod.Namespace); err != nil {
		return nil, err
	}
	if _, err := c.Kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("creating Pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return c.WaitPod(ctx, pod.Namespace+"/"+pod.Name, 2*time.Minute)
}

// PodObject is the Pod AddPod creates: the toolbox image (or spec's), a
// one-second grace period (a shell's sleep ignores SIGTERM as PID 1), and
// the node chosen by its kubernetes.io/hostname label, so that the real
// scheduler places it.
func PodObject(spec PodSpec) *corev1.Pod {
	image := spec.Image
	if image == "" {
		image = Toolbox
	}
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: spec.Name, Namespace: spec.Namespace, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": spec.Node},
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "main", Image: image, Command: spec.Command,
				ImagePullPolicy: corev1.PullIfNotPresent,
			}},
		},
	}
}

// WaitPod waits until the pod NAMESPACE/NAME is Ready and returns it.
func (c *Client) WaitPod(ctx context.Context, key string, timeout time.Duration) (*PodState, error) {
	ns, name, _ := strings.Cut(key, "/")
	deadline := time.Now().Add(timeout)
	for {
		pod, err := c.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && podReady(pod) {
			return c.podState(ctx, pod)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("pod %s not Ready after %s: %s", key, timeout, podProblem(pod, err))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Pod is the running pod NAMESPACE/NAME.
func (c *Client) Pod(ctx context.Context, key string) (*PodState, error) {
	ns, name, ok := strings.Cut(key, "/")
	if !ok {
		return nil, fmt.Errorf("%q: give the pod as NAMESPACE/NAME", key)
	}
	pod, err := c.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", key, err)
	}
	return c.podState(ctx, pod)
}

func (c *Client) podState(ctx context.Context, pod *corev1.Pod) (*PodState, error) {
	n, err := c.Node(pod.Spec.NodeName)
	if err != nil {
		return nil, err
	}
	netns, err := n.PodNetNS(ctx, pod.Namespace, pod.Name)
	if err != nil {
		return nil, err
	}
	return &PodState{
		Namespace: pod.Namespace, Name: pod.Name, Node: pod.Spec.NodeName, IP: pod.Status.PodIP,
		HostIface: cniplugin.HostVethName("cali", cniplugin.PodArgs{Namespace: pod.Namespace, Name: pod.Name}, ""),
		NetNS:     netns,
	}, nil
}

// Node is the running node of that name, from the state file.
func (c *Client) Node(name string) (*node.Node, error) {
	s, err := ReadState(c.Dir)
	if err != nil {
		return nil, err
	}
	ns, ok := s.Node(name)
	if !ok || ns.InitPID == 0 {
		return nil, fmt.Errorf("no running node %q in the lab: `calyx-lab status` lists them", name)
	}
	cfg := node.Config{Name: ns.Name, NetNS: nsexec.NamedPath(ns.NetNS), Dir: ns.Dir, Runtime: node.Runtime(ns.Runtime),
		RuntimeDir: ns.RuntimeDir, Hierarchies: s.Hierarchies, CgroupRoot: filepath.Join(s.Cgroup, ns.Name)}
	return node.Attach(cfg, ns.InitPID), nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podProblem says why a pod is not ready, as `kubectl describe` would.
func podProblem(p *corev1.Pod, err error) string {
	if err != nil {
		return err.Error()
	}
	msg := fmt.Sprintf("phase %s on node %q", p.Status.Phase, p.Spec.NodeName)
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			msg += fmt.Sprintf("; %s: %s", c.Type, c.Message)
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			msg += fmt.Sprintf("; container %s waiting: %s %s", cs.Name, w.Reason, w.Message)
		}
	}
	return msg + " (kubectl describe pod shows the events)"
}

// DelPod deletes the pod and waits until it is gone: the kubelet has then
// stopped its sandbox, and the runtime has run CNI DEL.
func (c *Client) DelPod(ctx context.Context, key string) error {
	ns, name, ok := strings.Cut(key, "/")
	if !ok {
		return fmt.Errorf("%q: give the pod as NAMESPACE/NAME", key)
	}
	err := c.Kube.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("no pod %s in the lab", key)
	}
	if err != nil {
		return fmt.Errorf("deleting pod %s: %w", key, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := c.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pod %s still there a minute after its deletion (Terminating?): kubectl describe pod -n %s %s", key, ns, name)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
