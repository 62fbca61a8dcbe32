package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// PodSpec says what pod to make.
type PodSpec struct {
	Namespace, Name, Node string
	Labels                map[string]string
	// Command, if any, runs in the pod's namespace in the background.
	Command []string
}

// PodNetNS is the network namespace of pod NAMESPACE/NAME.
func PodNetNS(namespace, name string) string { return "pod-" + namespace + "-" + name }

// Client is what the lab commands that run outside the supervisor need:
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

// AddPod makes a pod as a kubelet and containerd would: a network namespace
// wired by the node's CNI plugins through libcni, and a Pod object bound to
// the node with its IP and Ready in the status.
func (c *Client) AddPod(ctx context.Context, spec PodSpec) (_ *PodState, err error) {
	if errs := validation.IsDNS1123Label(spec.Namespace); len(errs) > 0 {
		return nil, fmt.Errorf("namespace %q: %s", spec.Namespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Label(spec.Name); len(errs) > 0 {
		return nil, fmt.Errorf("pod name %q: %s", spec.Name, strings.Join(errs, "; "))
	}
	s, err := ReadState(c.Dir)
	if err != nil {
		return nil, err
	}
	node, ok := s.Node(spec.Node)
	if !ok {
		return nil, fmt.Errorf("no node %q in the lab: `calyx-lab status` lists them", spec.Node)
	}
	key := spec.Namespace + "/" + spec.Name
	if _, ok := s.Pod(key); ok {
		return nil, fmt.Errorf("pod %s exists: delete it first with `calyx-lab pod del %s`", key, key)
	}
	id := make([]byte, 32)
	rand.Read(id)
	p := &PodState{Namespace: spec.Namespace, Name: spec.Name, Node: spec.Node,
		NetNS: PodNetNS(spec.Namespace, spec.Name), ContainerID: hex.EncodeToString(id)}

	if err := ensureNetNS(p.NetNS); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			deleteNetNS(p.NetNS)
		}
	}()
	res, err := cniAdd(ctx, node, p)
	if err != nil {
		return nil, err
	}
	for _, ip := range res.IPs {
		p.IP = ip.Address.IP.String()
	}
	for _, iface := range res.Interfaces {
		if iface.Sandbox == "" {
			p.HostIface = iface.Name
		}
	}
	defer func() {
		if err != nil {
			cniDel(context.WithoutCancel(ctx), node, p)
		}
	}()
	if err := c.writePod(ctx, spec, p, node.IP); err != nil {
		return nil, err
	}
	if len(spec.Command) > 0 {
		p.Log = filepath.Join(c.Dir, "pods", spec.Namespace+"_"+spec.Name+".log")
		if err := os.MkdirAll(filepath.Dir(p.Log), 0o755); err != nil {
			return nil, err
		}
		proc, err := startIn(p.NetNS, spec.Command, []string{"POD_IP=" + p.IP, "POD_NAME=" + spec.Name, "POD_NAMESPACE=" + spec.Namespace}, p.Log, true)
		if err != nil {
			return nil, err
		}
		p.CommandPID = proc.pid()
	}
	err = updateState(c.Dir, func(s *State) error {
		s.Pods = append(s.Pods, *p)
		return nil
	})
	return p, err
}

// DelPod runs CNI DEL for the pod, deletes its namespace, its command and
// its Pod object.
func (c *Client) DelPod(ctx context.Context, key string) error {
	s, err := ReadState(c.Dir)
	if err != nil {
		return err
	}
	p, ok := s.Pod(key)
	if !ok {
		return fmt.Errorf("no pod %s in the lab: `calyx-lab status` lists them", key)
	}
	node, _ := s.Node(p.Node)
	killPod(p.CommandPID)
	var errs []error
	if node != nil {
		if err := cniDel(ctx, node, p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := deleteNetNS(p.NetNS); err != nil {
		errs = append(errs, err)
	}
	err = c.Kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("deleting Pod %s: %w", key, err))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return updateState(c.Dir, func(s *State) error {
		for i := range s.Pods {
			if s.Pods[i].Key() == key {
				s.Pods = append(s.Pods[:i], s.Pods[i+1:]...)
				break
			}
		}
		return nil
	})
}

func cniRuntime(node *NodeState, p *PodState) (*libcni.CNIConfig, *libcni.NetworkConfigList, *libcni.RuntimeConf, error) {
	list, err := libcni.ConfListFromFile(filepath.Join(node.Dir, "net.d", "10-calyx.conflist"))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("loading %s's conflist: %w", node.Name, err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{filepath.Join(node.Dir, "bin")}, filepath.Join(node.Dir, "cni-cache"), nil)
	rt := &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       netnsPath(p.NetNS),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
		},
		CapabilityArgs: map[string]any{"portMappings": []any{}},
	}
	return cni, list, rt, nil
}

// cniAdd calls the node's plugins from inside the node's namespace, as
// containerd on that node would.
func cniAdd(ctx context.Context, node *NodeState, p *PodState) (*current.Result, error) {
	cni, list, rt, err := cniRuntime(node, p)
	if err != nil {
		return nil, err
	}
	var res *current.Result
	err = inNetNS(node.NetNS, func() error {
		r, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("CNI ADD for %s on %s: %w", p.Key(), node.Name, err)
	}
	return res, nil
}

func cniDel(ctx context.Context, node *NodeState, p *PodState) error {
	cni, list, rt, err := cniRuntime(node, p)
	if err != nil {
		return err
	}
	err = inNetNS(node.NetNS, func() error { return cni.DelNetworkList(ctx, list, rt) })
	if err != nil {
		return fmt.Errorf("CNI DEL for %s on %s: %w", p.Key(), node.Name, err)
	}
	return nil
}

// writePod creates the Pod object bound to its node, and its status with
// the IP and Ready, as the kubelet writes it once the sandbox is up.
func (c *Client) writePod(ctx context.Context, spec PodSpec, p *PodState, hostIP string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: spec.Namespace}}
	if _, err := c.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", spec.Namespace, err)
	}
	// The ServiceAccount admission plugin wants the namespace's default
	// account, which kube-controller-manager would create.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := c.Kube.CoreV1().ServiceAccounts(spec.Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the default ServiceAccount of %s: %w", spec.Namespace, err)
	}
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: spec.Name, Namespace: spec.Namespace, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeName:                     spec.Node,
			AutomountServiceAccountToken: &no,
			Containers:                   []corev1.Container{{Name: "main", Image: "calyx-lab/netns"}},
		},
	}
	created, err := c.Kube.CoreV1().Pods(spec.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating Pod %s: %w", p.Key(), err)
	}
	now := metav1.Now()
	created.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    hostIP,
		PodIP:     p.IP,
		PodIPs:    []corev1.PodIP{{IP: p.IP}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "main", Ready: true, Image: "calyx-lab/netns",
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}},
	}
	if _, err := c.Kube.CoreV1().Pods(spec.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("writing Pod %s's status: %w", p.Key(), err)
	}
	return nil
}
