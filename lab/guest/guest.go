// Package guest is how the lab talks to a node that is a virtual machine
// (lab/vmnode): a small HTTP server the guest's init starts on its underlay
// address, reachable from the lab's namespaces only, that runs commands
// and captures an interface's packets; and its client. It is what `ssh`
// and `tcpdump -w -` would be on a real machine, in a few megabytes.
package guest

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Port is where the guest's server listens.
const Port = 7070

// ExecRequest is a command to run in the guest.
type ExecRequest struct {
	Argv  []string `json:"argv"`
	Stdin []byte   `json:"stdin,omitempty"`
	// Timeout bounds the command; 0 means a minute.
	Timeout time.Duration `json:"timeout,omitempty"`
}

// ExecResult is how it went.
type ExecResult struct {
	Stdout, Stderr []byte
	Code           int
}

// Handler serves /exec and /capture.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /exec", serveExec)
	mux.HandleFunc("GET /capture", serveCapture)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	return mux
}

func serveExec(w http.ResponseWriter, r *http.Request) {
	var req ExecRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Argv) == 0 {
		http.Error(w, fmt.Sprintf("want {argv: [...]}: %v", err), http.StatusBadRequest)
		return
	}
	if req.Timeout == 0 {
		req.Timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(r.Context(), req.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, req.Argv[0], req.Argv[1:]...)
	cmd.Stdin = bytes.NewReader(req.Stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	res := ExecResult{}
	if err := cmd.Run(); err != nil {
		res.Code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			res.Code = ee.ExitCode()
		} else {
			stderr.WriteString(err.Error())
		}
	}
	res.Stdout, res.Stderr = stdout.Bytes(), stderr.Bytes()
	json.NewEncoder(w).Encode(res)
}

// serveCapture records every frame of ?iface= for ?seconds= and answers
// with a pcap file: Ethernet frames, or bare IP packets for a device
// without a link layer (the kernel's ipip tunl0).
func serveCapture(w http.ResponseWriter, r *http.Request) {
	iface, err := net.InterfaceByName(r.URL.Query().Get("iface"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	secs, _ := strconv.ParseFloat(r.URL.Query().Get("seconds"), 64)
	if secs <= 0 || secs > 120 {
		secs = 5
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: iface.Index}); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	linkType := uint32(1) // Ethernet
	if len(iface.HardwareAddr) == 0 {
		linkType = 101 // raw IP
	}
	var out bytes.Buffer
	writePcapHeader(&out, linkType)
	buf := make([]byte, 65536)
	for deadline := time.Now().Add(time.Duration(secs * float64(time.Second))); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || n <= 0 {
			continue
		}
		writePcapRecord(&out, time.Now(), buf[:n])
	}
	w.Header().Set("Content-Type", "application/vnd.tcpdump.pcap")
	w.Write(out.Bytes())
}

// writePcapHeader writes a pcap file's header (version 2.4, microsecond
// timestamps).
func writePcapHeader(w io.Writer, linkType uint32) {
	binary.Write(w, binary.LittleEndian, struct {
		Magic               uint32
		Major, Minor        uint16
		Zone, Sigfigs, Snap uint32
		LinkType            uint32
	}{0xa1b2c3d4, 2, 4, 0, 0, 65536, linkType})
}

func writePcapRecord(w io.Writer, t time.Time, data []byte) {
	binary.Write(w, binary.LittleEndian, []uint32{uint32(t.Unix()), uint32(t.Nanosecond() / 1000), uint32(len(data)), uint32(len(data))})
	w.Write(data)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
