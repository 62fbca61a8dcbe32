// Package cnimain runs a CNI plugin as skel does, but writes its errors as
// the spec's error object, cniVersion included: skel leaves cniVersion out.
package cnimain

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// Error is the spec's error object ("Error" in SPEC.md).
type Error struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

// Run is skel.PluginMainFuncs with spec error objects: it exits 1 after
// printing one when a handler or skel fails.
func Run(funcs skel.CNIFuncs, versions version.PluginInfo, about string) {
	stdin := teeStdin()
	e := skel.PluginMainFuncsWithError(funcs, versions, about)
	if e == nil {
		return
	}
	// skel fails on its environment before reading stdin, but the
	// runtime has sent the request's configuration all the same: the
	// error answers in the version it asked for.
	stdin.wait(time.Second)
	out, err := json.MarshalIndent(Error{
		CNIVersion: ErrorVersion(stdin.bytes(), versions),
		Code:       e.Code, Msg: e.Msg, Details: e.Details,
	}, "", "    ")
	if err == nil {
		_, err = os.Stdout.Write(append(out, '\n'))
	}
	if err != nil {
		slog.Error("writing the error object to stdout", "err", err, "error", e)
	}
	os.Exit(1)
}

// ErrorVersion is the cniVersion of an error answering netconf: the
// request's when the plugin speaks it, else the newest it speaks (the
// request may not say, or say something unknown).
func ErrorVersion(netconf []byte, versions version.PluginInfo) string {
	supported := versions.SupportedVersions()
	var c struct {
		CNIVersion string `json:"cniVersion"`
	}
	if json.Unmarshal(netconf, &c) == nil && slices.Contains(supported, c.CNIVersion) {
		return c.CNIVersion
	}
	newest := supported[0]
	for _, v := range supported[1:] {
		if gt, err := version.GreaterThan(v, newest); err == nil && gt {
			newest = v
		}
	}
	return newest
}

// lockedBuffer keeps what came on stdin.
type lockedBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{} // closed at stdin's end
}

// wait waits for stdin's end, at most timeout (a terminal may never end).
func (b *lockedBuffer) wait(timeout time.Duration) {
	select {
	case <-b.done:
	case <-time.After(timeout):
	}
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.buf.Bytes())
}

// teeStdin puts a pipe in front of stdin that keeps a copy of what skel
// reads. skel reads stdin only when its environment checks pass (never
// for VERSION); the copy goes on to stdin's end regardless, so an error
// about the environment still knows the request's version.
func teeStdin() *lockedBuffer {
	kept := &lockedBuffer{done: make(chan struct{})}
	r, w, err := os.Pipe()
	if err != nil {
		close(kept.done)
		return kept // skel reads the real stdin; errors name the newest version
	}
	orig := os.Stdin
	os.Stdin = r
	go func() {
		defer close(kept.done)
		io.Copy(w, io.TeeReader(orig, kept))
		w.Close()
	}()
	return kept
}
