package lab

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"pack.ag/tftp"
)

// ServeTFTP serves the files of root over TFTP on addr (":69" in a pod),
// logging each request with the client's address: what the server sees is
// the point of the demo (the client's real pod IP, not its node's).
func ServeTFTP(addr, root string, logw io.Writer) error {
	s, err := tftp.NewServer(addr)
	if err != nil {
		return fmt.Errorf("tftp server on %s: %w", addr, err)
	}
	lg := log.New(logw, "", log.LstdFlags)
	s.ReadHandler(tftp.ReadHandlerFunc(func(r tftp.ReadRequest) {
		name := filepath.Clean("/" + r.Name())
		lg.Printf("RRQ %s from %s", r.Name(), r.Addr())
		f, err := os.Open(filepath.Join(root, name))
		if err != nil {
			r.WriteError(tftp.ErrCodeFileNotFound, "no such file")
			lg.Printf("RRQ %s from %s: %v", r.Name(), r.Addr(), err)
			return
		}
		defer f.Close()
		n, err := io.Copy(r, f)
		if err != nil {
			lg.Printf("sending %s to %s: %v", r.Name(), r.Addr(), err)
			return
		}
		lg.Printf("sent %s (%d bytes) to %s", r.Name(), n, r.Addr())
	}))
	lg.Printf("serving %s over TFTP on %s", root, addr)
	return s.ListenAndServe()
}

// GetTFTP downloads file from server (host or host:port) with a plain
// RFC 1350 read: no options, so 512-byte blocks, each acknowledged, and
// nothing else on the wire. Like atftp and busybox (and the article's
// client), it follows the server to the address and port its first DATA
// comes from, which is what makes TFTP work through a Service's DNAT.
//
// It is written here rather than taken from pack.ag/tftp, whose client
// mis-parses a first DATA block containing NUL bytes as options and panics.
func GetTFTP(server, file string, w io.Writer) (int64, error) {
	if !strings.Contains(server, ":") {
		server += ":69"
	}
	raddr, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		return 0, fmt.Errorf("tftp server %q: %w", server, err)
	}
	conn, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return 0, err
	}
	defer conn.Close()

	rrq := binary.BigEndian.AppendUint16(nil, 1)
	rrq = append(append(append(rrq, file...), 0), "octet\x00"...)
	last, dest := rrq, raddr // what to retransmit, and where
	var peer *net.UDPAddr    // the server's transfer ID, once known
	var total int64
	buf := make([]byte, 4+512+64)
	expect := uint16(1)
	for tries := 0; ; {
		if _, err := conn.WriteToUDP(last, dest); err != nil {
			return total, err
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := conn.ReadFromUDP(buf)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			if tries++; tries > 5 {
				return total, fmt.Errorf("tftp get %s from %s: no answer after %d tries (block %d)", file, server, tries, expect)
			}
			continue
		}
		if err != nil {
			return total, err
		}
		if peer != nil && (!from.IP.Equal(peer.IP) || from.Port != peer.Port) {
			// Someone else: tell them, and keep waiting for our server.
			conn.WriteToUDP(tftpError(5, "unknown transfer ID"), from)
			continue
		}
		if n < 4 {
			continue
		}
		op, block := binary.BigEndian.Uint16(buf[:2]), binary.BigEndian.Uint16(buf[2:4])
		switch op {
		case 5:
			msg, _, _ := strings.Cut(string(buf[4:n]), "\x00")
			return total, fmt.Errorf("tftp get %s from %s: server error %d: %s", file, server, block, msg)
		case 3:
		default:
			return total, fmt.Errorf("tftp get %s from %s: unexpected opcode %d", file, server, op)
		}
		if peer == nil {
			peer, dest = from, from
		}
		tries = 0
		ack := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, 4), block)
		if block != expect {
			last = ack // a duplicate: acknowledge it again
			continue
		}
		m, err := w.Write(buf[4:n])
		total += int64(m)
		if err != nil {
			return total, err
		}
		last = ack
		expect++
		if n-4 < 512 {
			_, err := conn.WriteToUDP(ack, dest)
			return total, err
		}
	}
}

func tftpError(code uint16, msg string) []byte {
	b := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, 5), code)
	return append(append(b, msg...), 0)
}

// TFTPServerScript is the toolbox's TFTP server as the article's pods run
// it: tftpd-hpa serving /srv/tftp, its log written to the container's
// output by busybox's syslogd (`kubectl logs` shows "RRQ from IP filename
// F"). It refuses the transfer-size option (RFC 2349) that busybox's client
// asks for: the article's exchange is plain RFC 1350, 1 RRQ, 4 DATA and 4
// ACK, without an option acknowledgement in front.
const TFTPServerScript = "syslogd -n -O - & exec in.tftpd --foreground --address :69 --secure --verbose --refuse tsize --user nobody /srv/tftp"

// AddTFTPServer runs the toolbox's TFTP server in a pod, serving DemoFile
// from the ConfigMap tftp-files of the pod's namespace (made if missing).
func (c *Client) AddTFTPServer(ctx context.Context, spec PodSpec) (*PodState, error) {
	if err := c.EnsureNamespace(ctx, spec.Namespace); err != nil {
		return nil, err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "tftp-files", Namespace: spec.Namespace},
		BinaryData: map[string][]byte{DemoFile: DemoContent()}}
	if _, err := c.Kube.CoreV1().ConfigMaps(spec.Namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating ConfigMap tftp-files: %w", err)
	}
	spec.Command = []string{"sh", "-c", TFTPServerScript}
	pod := PodObject(spec)
	pod.Spec.Volumes = []corev1.Volume{{Name: "files", VolumeSource: corev1.VolumeSource{
		ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "tftp-files"}}}}}
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "files", MountPath: "/srv/tftp"}}
	return c.CreatePod(ctx, pod)
}
