package node

import (
	"bytes"
	"fmt"
	"text/template"
)

// containerd's configuration, as a node's /etc/containerd/config.toml.
// With RefCNI, a second runtime handler, ref, takes its CNI configuration
// from /etc/cni/ref.d: the bench starts sandboxes with calyx and with a
// reference plugin through the same runtime, side by side.
// Both formats say the same: the CRI socket, the sandbox image, runc as
// the runtime with cgroupfs (the kubelet's driver here), the CNI
// directories, and restrict_oom_score_adj: root here lacks
// CAP_SYS_RESOURCE, and without it runc cannot lower a container's
// oom_score_adj ("can't get final child's PID from pipe: EOF").
var containerdConfigs = map[Runtime]*template.Template{
	// containerd 1.6 and 1.7 read version 2.
	Containerd16: template.Must(template.New("v2").Parse(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{.SandboxImage}}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{{.Runc}}"
        SystemdCgroup = false
{{- if .RefCNI}}
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ref]
      runtime_type = "io.containerd.runc.v2"
      cni_conf_dir = "/etc/cni/ref.d"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ref.options]
        BinaryName = "{{.Runc}}"
        SystemdCgroup = false
{{- end}}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`)),
	// containerd 2.x reads version 3, with the CRI plugin split in two.
	Containerd2: template.Must(template.New("v3").Parse(`version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{{.SandboxImage}}"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{{.Runc}}"
        SystemdCgroup = false
{{- if .RefCNI}}
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.ref]
      runtime_type = "io.containerd.runc.v2"
      cni_conf_dir = "/etc/cni/ref.d"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.ref.options]
        BinaryName = "{{.Runc}}"
        SystemdCgroup = false
{{- end}}
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
`)),
}

// kubeletConfig is the node's /var/lib/kubelet/config.yaml. The machine
// mounts cgroup v1 (failCgroupV1: false) and has no systemd for the
// kubelet to drive (cgroupfs); each node's pods live under a cgroup root of
// its own. Image garbage collection and disk eviction are off: the images
// were imported, nothing could pull them again.
var kubeletConfig = template.Must(template.New("kubelet").Parse(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {{.CgroupRoot}}
cgroupsPerQOS: true
address: {{.IP}}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
failSwapOn: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS:
- {{.ClusterDNS}}
resolvConf: /etc/kubernetes/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
serializeImagePulls: false
`))

// kubeletKubeconfig is /etc/kubernetes/kubelet.conf: the node's own
// credential (system:node:NAME in system:nodes, as the Node authorizer
// and NodeRestriction want).
var kubeletKubeconfig = template.Must(template.New("kubeconfig").Parse(`apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: {{.APIServer}}
    certificate-authority: /etc/kubernetes/pki/ca.crt
users:
- name: {{.User}}
  user:
    client-certificate: /etc/kubernetes/pki/kubelet-client.crt
    client-key: /etc/kubernetes/pki/kubelet-client.key
contexts:
- name: lab
  context:
    cluster: lab
    user: {{.User}}
current-context: lab
`))

func render(t *template.Template, data any) ([]byte, error) {
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		return nil, fmt.Errorf("rendering %s: %w", t.Name(), err)
	}
	return b.Bytes(), nil
}
