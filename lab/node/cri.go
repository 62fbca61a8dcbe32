package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRI connects to the node's container runtime as the kubelet does. Close
// the connection when done.
func (n *Node) CRI() (runtimeapi.RuntimeServiceClient, *grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix://"+n.CRISocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to %s's containerd: %w", n.Name, err)
	}
	return runtimeapi.NewRuntimeServiceClient(conn), conn, nil
}

// PodNetNS is the host's path to the network namespace of the ready
// sandbox of pod namespace/name on this node, from the runtime's own
// account of it (what `crictl inspectp` prints).
func (n *Node) PodNetNS(ctx context.Context, namespace, name string) (string, error) {
	rt, conn, err := n.CRI()
	if err != nil {
		return "", err
	}
	defer conn.Close()
	list, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: map[string]string{
			"io.kubernetes.pod.namespace": namespace,
			"io.kubernetes.pod.name":      name,
		},
	}})
	if err != nil {
		return "", fmt.Errorf("listing %s's pod sandboxes: %w", n.Name, err)
	}
	if len(list.Items) != 1 {
		return "", fmt.Errorf("%s has %d ready sandboxes of pod %s/%s, want 1", n.Name, len(list.Items), namespace, name)
	}
	st, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: list.Items[0].Id, Verbose: true})
	if err != nil {
		return "", fmt.Errorf("reading sandbox %s: %w", list.Items[0].Id, err)
	}
	path, err := netnsFromInfo(st.Info["info"])
	if err != nil {
		return "", fmt.Errorf("sandbox of %s/%s on %s: %w", namespace, name, n.Name, err)
	}
	return n.Path(path), nil
}

// netnsFromInfo reads the network namespace's path out of containerd's
// verbose sandbox info: its runtime spec's namespaces.
func netnsFromInfo(info string) (string, error) {
	var v struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string } `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(info), &v); err != nil {
		return "", fmt.Errorf("parsing the runtime's sandbox info: %w", err)
	}
	for _, ns := range v.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" && ns.Path != "" {
			return ns.Path, nil
		}
	}
	return "", fmt.Errorf("the runtime reports no network namespace path")
}

// ImportImages loads image tarballs into the node's containerd, in the
// namespace the CRI uses, as `kind load image-archive` does: nothing is
// ever pulled from a registry.
func (n *Node) ImportImages(ctx context.Context, tars ...string) error {
	for _, tar := range tars {
		cmd := exec.CommandContext(ctx, filepath.Join(n.RuntimeDir, "ctr"), "--address", n.CRISocket(),
			"--namespace", "k8s.io", "images", "import", "--all-platforms", "--snapshotter", "overlayfs", tar)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("importing %s into %s's containerd: %w\n%s", tar, n.Name, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// ContainerPIDs are the host PIDs of the processes of the named container
// of pod namespace/name on this node, from its cgroup.
func (n *Node) ContainerPIDs(ctx context.Context, namespace, pod, container string) ([]int, error) {
	rt, conn, err := n.CRI()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	list, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		LabelSelector: map[string]string{
			"io.kubernetes.pod.namespace":  namespace,
			"io.kubernetes.pod.name":       pod,
			"io.kubernetes.container.name": container,
		},
	}})
	if err != nil {
		return nil, fmt.Errorf("listing %s's containers: %w", n.Name, err)
	}
	if len(list.Containers) != 1 {
		return nil, fmt.Errorf("%s runs %d containers %s of pod %s/%s, want 1", n.Name, len(list.Containers), container, namespace, pod)
	}
	st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: list.Containers[0].Id, Verbose: true})
	if err != nil {
		return nil, err
	}
	var v struct {
		RuntimeSpec struct {
			Linux struct {
				CgroupsPath string `json:"cgroupsPath"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &v); err != nil {
		return nil, fmt.Errorf("parsing the runtime's container info: %w", err)
	}
	return cgroupPIDs(n.Hierarchies[0], v.RuntimeSpec.Linux.CgroupsPath)
}

// cgroupPIDs reads a cgroup's processes, as the host numbers them.
func cgroupPIDs(hierarchy, path string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(hierarchy, path, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("reading the container's cgroup: %w", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
