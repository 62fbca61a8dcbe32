package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// DefaultDir holds everything the lab writes; tmpfs, so a reboot cleans it.
const DefaultDir = "/run/calyx-lab"

// State is what separate calyx-lab commands share: the supervisor that runs
// the control plane and the nodes writes it; `pod add`, `exec` and the
// others read it. Pods are not in it: the API server knows them.
type State struct {
	SupervisorPID int         `json:"supervisorPID"`
	Kubeconfig    string      `json:"kubeconfig"`
	APIServer     string      `json:"apiServer"`
	Nodes         []NodeState `json:"nodes"`
	// KubePIDs are kube-scheduler's and kube-controller-manager's.
	KubePIDs []int `json:"kubePIDs,omitempty"`
	// Cgroup is the lab's cgroup tree, Hierarchies where it lives, and
	// CgroupsCreated the directories Up made for it (down removes them).
	Cgroup         string   `json:"cgroup,omitempty"`
	Hierarchies    []string `json:"hierarchies,omitempty"`
	CgroupsCreated []string `json:"cgroupsCreated,omitempty"`
}

// NodeState is one node.
type NodeState struct {
	Name  string `json:"name"`
	IP    string `json:"ip"`
	NetNS string `json:"netns"`
	Dir   string `json:"dir"`
	// Runtime is the node's container runtime, RuntimeDir its binaries.
	Runtime    string `json:"runtime"`
	RuntimeDir string `json:"runtimeDir,omitempty"`
	// InitPID is the host PID of the node's init, the PID 1 of its
	// namespaces (0 until it runs).
	InitPID int `json:"initPID,omitempty"`
}

// Node returns the named node.
func (s *State) Node(name string) (*NodeState, bool) {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i], true
		}
	}
	return nil, false
}

func stateFile(dir string) string { return filepath.Join(dir, "state.json") }

// ReadState reads the lab's state; a lab that is not up is an error that
// says so.
func ReadState(dir string) (*State, error) {
	b, err := os.ReadFile(stateFile(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("the lab is not up (no %s): run `calyx-lab up`", stateFile(dir))
	}
	if err != nil {
		return nil, err
	}
	s := &State{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("reading %s: %w; `calyx-lab down` clears a broken lab", stateFile(dir), err)
	}
	return s, nil
}

// updateState changes the state under an exclusive lock, so commands run
// side by side do not lose each other's pods.
func updateState(dir string, fn func(*State) error) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, "state.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	s, err := ReadState(dir)
	if err != nil {
		s = &State{}
	}
	if err := fn(s); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := stateFile(dir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, stateFile(dir))
}
