package bench

import (
	"context"
	"path/filepath"
	"strings"
	"time"

	"github.com/calyx-net/calyx/lab"
)

// Lab is the shared 3-node lab the lab parts run on.
type Lab struct {
	*lab.Lab
	State *lab.State
}

// Node is a lab node by name.
func (l *Lab) Node(name string) *lab.NodeState {
	n, _ := l.State.Node(name)
	return n
}

// Workers are the worker nodes: the first one is where pods go.
func (l *Lab) Workers() []string { return []string{lab.NodeName(0), lab.NodeName(1)} }

// Others are every node but name.
func (l *Lab) Others(name string) []string {
	var o []string
	for _, n := range l.State.Nodes {
		if n.Name != name {
			o = append(o, n.Name)
		}
	}
	return o
}

// upLab brings a lab up, once any other lab on the machine has gone (the
// namespaces have fixed names).
func upLab(ctx context.Context, e *Env) (*Lab, error) {
	dir := filepath.Join(e.Dir, "lab")
	l, err := lab.Up(ctx, lab.Options{Dir: dir, BinDir: e.Opts.BinDir, ReferenceCNI: true,
		WaitForSlot: 10 * time.Minute, Progress: prefixWriter{e, "lab: "}})
	if err != nil {
		return nil, err
	}
	s, err := lab.ReadState(dir)
	if err != nil {
		l.Down()
		return nil, err
	}
	return &Lab{Lab: l, State: s}, nil
}

// prefixWriter turns the lab's progress into progress lines.
type prefixWriter struct {
	e      *Env
	prefix string
}

func (w prefixWriter) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if strings.TrimSpace(l) != "" {
			w.e.Logf("%s%s", w.prefix, strings.TrimSpace(l))
		}
	}
	return len(p), nil
}
