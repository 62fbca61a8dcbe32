// Package controlplane runs a real Kubernetes control plane for calyx's tests
// and lab: etcd in-process (go.etcd.io/etcd/server/v3/embed) and the real
// kube-apiserver binary, with certificates, a service-account key, RBAC, an
// admin credential and calyx's CRDs installed.
package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/calyx-net/calyx/deploy"
	"github.com/calyx-net/calyx/lab/kubebin"
	"github.com/calyx-net/calyx/lab/spawn"
)

// Options tune the control plane; the zero value serves tests.
type Options struct {
	// Dir holds etcd's data, the certificates, logs and the kubeconfig.
	// Empty means a new temporary directory, removed by Stop.
	Dir string
	// BindAddress is where kube-apiserver listens; default 127.0.0.1.
	BindAddress string
	// AdvertiseAddress is the address kube-apiserver publishes for the
	// kubernetes Service. It is required inside a network namespace without
	// a default route, where kube-apiserver cannot pick one itself.
	AdvertiseAddress string
	// Port is kube-apiserver's secure port; 0 picks a free one.
	Port int
	// Progress receives what a person waiting should see: the first-run
	// build of kube-apiserver and the steps of start-up.
	Progress io.Writer
	// Logger receives diagnostics; default discards them.
	Logger *slog.Logger
	// StartTimeout bounds the wait for kube-apiserver to become ready.
	StartTimeout time.Duration
	// NetNS is the path of a network namespace (/var/run/netns/NAME) to run
	// in: etcd's listeners are opened there and kube-apiserver starts
	// there, as on a control-plane node. Empty means the caller's own.
	NetNS string
	// ExtraArgs are appended to kube-apiserver's arguments.
	ExtraArgs []string
}

// ControlPlane is a running etcd + kube-apiserver.
type ControlPlane struct {
	// Config is an admin client configuration.
	Config *rest.Config
	// Kubeconfig is the path of an admin kubeconfig file.
	Kubeconfig string
	// Dir holds every file the control plane made.
	Dir string
	// URL is kube-apiserver's address.
	URL string
	// Version is the Kubernetes version of kube-apiserver.
	Version string

	proxy     *proxy
	etcd      *embed.Etcd
	etcdURL   string
	apiserver *exec.Cmd
	bin       string
	pki       *pki
	opts      Options
	port      int
	exited    chan struct{}
	removeDir bool
	log       *slog.Logger
}

// Start starts etcd and kube-apiserver and installs the CRDs. The caller must
// call Stop, which also removes the files Start made.
func Start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	opts = opts.withDefaults()
	bin, err := kubebin.Ensure(ctx, "kube-apiserver", opts.Progress)
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{Dir: opts.Dir, log: opts.Logger, opts: opts, bin: bin}
	if err := cp.makeDir(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	if err := cp.startEtcd(); err != nil {
		return nil, err
	}
	if err := cp.prepareServing(); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := cp.startAPIServer(); err != nil {
		return nil, err
	}
	cp.Config = cp.adminConfig()
	if err := cp.waitReady(ctx, opts.StartTimeout); err != nil {
		return nil, err
	}
	fmt.Fprintf(opts.Progress, "kube-apiserver %s ready at %s after %s\n", cp.Version, cp.URL, time.Since(start).Round(time.Millisecond))
	if err := installCRDs(ctx, cp.Config); err != nil {
		return nil, err
	}
	if err := cp.writeHostKubeconfig(); err != nil {
		return nil, err
	}
	return cp, nil
}

func (o Options) withDefaults() Options {
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.BindAddress == "" {
		o.BindAddress = "127.0.0.1"
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 60 * time.Second
	}
	return o
}

// makeDir creates the control plane's directory, a temporary one (removed
// by Stop) when Options.Dir is empty.
func (cp *ControlPlane) makeDir() error {
	if cp.Dir != "" {
		if err := os.MkdirAll(cp.Dir, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", cp.Dir, err)
		}
		return nil
	}
	dir, err := os.MkdirTemp("", "calyx-cp-")
	if err != nil {
		return fmt.Errorf("creating the control plane's dir: %w", err)
	}
	cp.Dir, cp.removeDir = dir, true
	return nil
}

// prepareServing issues the serving certificates for the addresses the API
// server is reached at, picks its port and sets URL.
func (cp *ControlPlane) prepareServing() error {
	opts := cp.opts
	var ips []net.IP
	for _, a := range []string{opts.BindAddress, opts.AdvertiseAddress} {
		if ip := net.ParseIP(a); ip != nil && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
	}
	pki, err := newPKI(cp.Dir, ips)
	if err != nil {
		return fmt.Errorf("creating certificates: %w", err)
	}
	port := opts.Port
	if port == 0 {
		if port, err = cp.freePort(opts.BindAddress); err != nil {
			return err
		}
	}
	host := opts.BindAddress
	if net.ParseIP(host).IsUnspecified() {
		host = "127.0.0.1"
	}
	if opts.AdvertiseAddress != "" {
		host = opts.AdvertiseAddress
	}
	cp.URL = "https://" + net.JoinHostPort(host, strconv.Itoa(port))
	cp.pki, cp.port = pki, port
	return nil
}

// adminConfig is the client configuration of the cluster's admin, dialling
// into the control plane's namespace when it has one.
func (cp *ControlPlane) adminConfig() *rest.Config {
	c := &rest.Config{
		Host: cp.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   cp.pki.caPEM,
			CertData: cp.pki.adminCertPEM,
			KeyData:  cp.pki.adminKeyPEM,
		},
		QPS:   -1, // tests create objects in bursts; no client-side throttling
		Burst: -1,
	}
	if cp.opts.NetNS != "" {
		c.Dial = dialIn(cp.opts.NetNS)
	}
	return c
}

// writeHostKubeconfig writes the kubeconfig for kubectl on the host: when
// the API server lives in a namespace, it goes through a loopback proxy
// into it.
func (cp *ControlPlane) writeHostKubeconfig() error {
	hostURL := cp.URL
	if cp.opts.NetNS != "" {
		var err error
		if cp.proxy, err = startProxy(cp.opts.NetNS, strings.TrimPrefix(cp.URL, "https://")); err != nil {
			return err
		}
		hostURL = "https://" + cp.proxy.addr()
	}
	cp.Kubeconfig = filepath.Join(cp.Dir, "kubeconfig")
	return cp.WriteKubeconfig(cp.Kubeconfig, hostURL)
}

func (cp *ControlPlane) startEtcd() error {
	// Free ports are picked by listening and closing, so another process can
	// take one in between; a retry with new ports covers that race.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = cp.tryStartEtcd(); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			return err
		}
	}
	return err
}

func (cp *ControlPlane) tryStartEtcd() error {
	clientPort, err := cp.freePort("127.0.0.1")
	if err != nil {
		return err
	}
	peerPort, err := cp.freePort("127.0.0.1")
	if err != nil {
		return err
	}
	cfg := embed.NewConfig()
	cfg.Name = "calyx"
	cfg.Dir = filepath.Join(cp.Dir, "etcd")
	cfg.LogLevel = "error"
	// The data lives as long as a test or a lab: durability across power
	// loss buys nothing, and an fsync per write on a VM disk costs tens of
	// milliseconds per API write.
	cfg.UnsafeNoFsync = true
	cfg.LogOutputs = []string{filepath.Join(cp.Dir, "etcd.log")}
	client := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	var e *embed.Etcd
	// etcd opens its listeners inside StartEtcd: in the node's namespace,
	// they stay there, whichever thread serves them later.
	err = inNetNS(cp.opts.NetNS, func() error {
		var err error
		e, err = embed.StartEtcd(cfg)
		return err
	})
	if err != nil {
		return fmt.Errorf("starting etcd in %s: %w", cfg.Dir, err)
	}
	cp.etcd = e
	cp.etcdURL = client.String()
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcd failed: %w", err)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("etcd not ready after 30s: see %s", cfg.LogOutputs[0])
	}
}

func (cp *ControlPlane) startAPIServer() error {
	bin, pki, opts, port := cp.bin, cp.pki, cp.opts, cp.port
	if opts.AdvertiseAddress != "" {
		opts.ExtraArgs = append([]string{"--advertise-address=" + opts.AdvertiseAddress}, opts.ExtraArgs...)
	}
	cp.exited = make(chan struct{})
	args := []string{
		"--etcd-servers=" + cp.etcdURL,
		"--bind-address=" + opts.BindAddress,
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(cp.Dir, "certs"),
		"--tls-cert-file=" + pki.ServingCert,
		"--tls-private-key-file=" + pki.ServingKey,
		"--client-ca-file=" + pki.CACert,
		"--service-account-key-file=" + pki.SAPub,
		"--service-account-signing-key-file=" + pki.SAKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		// As kubeadm sets it up: kubelets are authorized by the Node
		// authorizer and restricted to their own Node and pods.
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--kubelet-client-certificate=" + pki.KubeletClientCert,
		"--kubelet-client-key=" + pki.KubeletClientKey,
		// Node names are not in any DNS: exec and logs go to the
		// kubelet's InternalIP.
		"--kubelet-preferred-address-types=InternalIP",
		"--service-cluster-ip-range=10.96.0.0/12",
		"--allow-privileged=true",
		"--profiling=false",
	}
	args = append(args, opts.ExtraArgs...)
	logPath := filepath.Join(cp.Dir, "kube-apiserver.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	exited := cp.exited
	// If the test binary or the lab dies without Stop, the kernel ends
	// kube-apiserver too instead of leaving it behind.
	waited, err := spawn.Start(cmd, opts.NetNS)
	if err != nil {
		logFile.Close()
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	cp.apiserver = cmd
	go func() {
		<-waited
		logFile.Close()
		close(exited)
	}()
	cp.log.Info("kube-apiserver started", "pid", cmd.Process.Pid, "url", cp.URL, "log", logPath)
	return nil
}

func (cp *ControlPlane) waitReady(ctx context.Context, timeout time.Duration) error {
	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		return err
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil {
			v, err := cs.Discovery().ServerVersion()
			if err == nil {
				cp.Version = v.GitVersion
				return nil
			}
			last = err
		} else {
			last = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(body)))
		}
		select {
		case <-cp.exited:
			return fmt.Errorf("kube-apiserver exited during start-up: %s", cp.logTail())
		case <-ctx.Done():
			if parent.Err() != nil {
				return fmt.Errorf("waiting for kube-apiserver: %w (the caller's deadline, not the server's start-up timeout)", parent.Err())
			}
			return fmt.Errorf("kube-apiserver not ready after %s (last: %v): %s", timeout, last, cp.logTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// logTail is the end of kube-apiserver's log, for errors that must say why.
func (cp *ControlPlane) logTail() string {
	b, _ := os.ReadFile(filepath.Join(cp.Dir, "kube-apiserver.log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "last lines of kube-apiserver.log:\n" + strings.Join(lines, "\n")
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs applies calyx's CRDs and waits until they are served.
func installCRDs(ctx context.Context, cfg *rest.Config) error {
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	files, err := fs.Glob(deploy.CRDs, "crds/*.yaml")
	if err != nil {
		return err
	}
	var names []string
	for _, f := range files {
		data, err := deploy.CRDs.ReadFile(f)
		if err != nil {
			return err
		}
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(data, &obj.Object); err != nil {
			return fmt.Errorf("parsing %s: %w", f, err)
		}
		if _, err := dc.Resource(crdGVR).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("installing %s: %w", f, err)
		}
		names = append(names, obj.GetName())
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var resources []schema.GroupVersionResource
	kinds := map[string]string{}
	for _, name := range names {
		for {
			obj, err := dc.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err == nil && crdEstablished(obj) {
				group, _, _ := unstructured.NestedString(obj.Object, "spec", "group")
				plural, _, _ := unstructured.NestedString(obj.Object, "spec", "names", "plural")
				kind, _, _ := unstructured.NestedString(obj.Object, "spec", "names", "kind")
				kinds[plural] = kind
				resources = append(resources, schema.GroupVersionResource{Group: group, Version: "v1alpha1", Resource: plural})
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CRD %s not established after 30s", name)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	// The first write of a new custom resource takes kube-apiserver about
	// 2 s: pay for all of them at once, now, with dry-run creates, rather
	// than one by one inside the first tests and pod starts.
	var wg sync.WaitGroup
	for _, r := range resources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			obj := &unstructured.Unstructured{}
			obj.SetAPIVersion(r.Group + "/" + r.Version)
			obj.SetKind(kinds[r.Resource])
			obj.SetName("warm-up")
			// Invalid on purpose: it is refused after the slow part.
			dc.Resource(r).Create(ctx, obj, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		}()
	}
	wg.Wait()
	return nil
}

func crdEstablished(obj *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// WriteKubeconfig writes an admin kubeconfig for the API server at server
// (e.g. the address nodes reach it at).
func (cp *ControlPlane) WriteKubeconfig(path, server string) error {
	return writeKubeconfig(path, server, cp.pki)
}

func writeKubeconfig(path, server string, p *pki) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["calyx"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: p.CACert}
	cfg.AuthInfos["calyx-admin"] = &clientcmdapi.AuthInfo{ClientCertificate: p.AdminCert, ClientKey: p.AdminKey}
	cfg.Contexts["calyx"] = &clientcmdapi.Context{Cluster: "calyx", AuthInfo: "calyx-admin"}
	cfg.CurrentContext = "calyx"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing the kubeconfig: %w", err)
	}
	return nil
}

func (cp *ControlPlane) freePort(host string) (port int, err error) {
	err = inNetNS(cp.opts.NetNS, func() error {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return fmt.Errorf("finding a free port on %s: %w", host, err)
		}
		defer l.Close()
		port = l.Addr().(*net.TCPAddr).Port
		return nil
	})
	return port, err
}

// APIServerPID is kube-apiserver's process ID, or 0 when it is not running.
func (cp *ControlPlane) APIServerPID() int {
	if cp.apiserver == nil || cp.apiserver.Process == nil {
		return 0
	}
	return cp.apiserver.Process.Pid
}

// StopAPIServer stops kube-apiserver alone, leaving etcd and the files, as
// a crash or an upgrade of the API server would; StartAPIServer brings it
// back on the same address.
func (cp *ControlPlane) StopAPIServer() {
	if cp.apiserver == nil || cp.apiserver.Process == nil {
		return
	}
	cp.apiserver.Process.Kill()
	<-cp.exited
	cp.apiserver = nil
}

// StartAPIServer restarts kube-apiserver after StopAPIServer and waits
// until it is ready.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	if cp.apiserver != nil {
		return errors.New("kube-apiserver is already running")
	}
	if err := cp.startAPIServer(); err != nil {
		return err
	}
	return cp.waitReady(ctx, cp.opts.StartTimeout)
}

// Stop ends kube-apiserver and etcd and removes the files Start made in a
// temporary directory. It is safe to call more than once.
func (cp *ControlPlane) Stop() error {
	var errs []error
	if cp.proxy != nil {
		cp.proxy.close()
		cp.proxy = nil
	}
	if cp.apiserver != nil && cp.apiserver.Process != nil {
		cp.apiserver.Process.Signal(syscall.SIGTERM)
		select {
		case <-cp.exited:
		case <-time.After(10 * time.Second):
			cp.apiserver.Process.Kill()
			<-cp.exited
		}
		cp.apiserver = nil
	}
	if cp.etcd != nil {
		cp.etcd.Close()
		cp.etcd = nil
	}
	if cp.removeDir && cp.Dir != "" {
		if err := os.RemoveAll(cp.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CACertFile is the cluster CA's certificate: kube-controller-manager
// hands it to service accounts as their root CA.
func (cp *ControlPlane) CACertFile() string { return cp.pki.CACert }

// ServiceAccountKeyFile is the private key kube-apiserver verifies service
// account tokens with; kube-controller-manager signs them with it.
func (cp *ControlPlane) ServiceAccountKeyFile() string { return cp.pki.SAKey }

// IssueClientCert issues a client certificate of the cluster CA for user
// cn in groups orgs, as PEM: a kubelet's system:node:NAME in system:nodes,
// kube-scheduler's system:kube-scheduler.
func (cp *ControlPlane) IssueClientCert(cn string, orgs ...string) (cert, key []byte, err error) {
	return cp.pki.leaf(cn, orgs, x509.ExtKeyUsageClientAuth, nil, nil)
}

// CA is the cluster CA's certificate, as PEM.
func (cp *ControlPlane) CA() []byte { return cp.pki.caPEM }

// WriteKubeconfigFor writes a kubeconfig for server that authenticates as
// user cn in groups orgs, with a certificate issued for it.
func (cp *ControlPlane) WriteKubeconfigFor(path, server, cn string, orgs ...string) error {
	cert, key, err := cp.IssueClientCert(cn, orgs...)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["calyx"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: cp.pki.caPEM}
	cfg.AuthInfos[cn] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts["calyx"] = &clientcmdapi.Context{Cluster: "calyx", AuthInfo: cn}
	cfg.CurrentContext = "calyx"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing the kubeconfig of %s: %w", cn, err)
	}
	return nil
}
