// Package statedir is the node-local state the agent writes for the CNI
// plugin: the node's name, the pod MTU and the node's labels, one value per file in a
// directory (/var/lib/calyx by default), as Calico does in
// /var/lib/calico.
package statedir

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Default is the state directory on a real node.
const Default = "/var/lib/calyx"

// File names in the state directory.
const (
	NodenameFile = "nodename"
	MTUFile      = "mtu"
	// LabelsFile holds the node's labels as a JSON object, for the IP
	// pools' nodeSelectors: the CNI plugins' account may not read nodes.
	LabelsFile = "nodelabels"
)

// Write records the node name and pod MTU in dir. Each file is replaced
// atomically, so a CNI call never reads a half-written value.
func Write(dir, nodename string, mtu int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the state directory %s: %w (set --state-dir to a writable path)", dir, err)
	}
	for name, v := range map[string]string{NodenameFile: nodename, MTUFile: strconv.Itoa(mtu)} {
		if err := writeAtomic(filepath.Join(dir, name), v+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// WriteLabels records the node's labels in dir.
func WriteLabels(dir string, labels map[string]string) error {
	if labels == nil {
		labels = map[string]string{}
	}
	b, err := json.Marshal(labels) // sorted keys: unchanged labels, unchanged file
	if err != nil {
		return fmt.Errorf("encoding the node's labels: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the state directory %s: %w (set --state-dir to a writable path)", dir, err)
	}
	return writeAtomic(filepath.Join(dir, LabelsFile), string(b)+"\n")
}

func writeAtomic(path, content string) error {
	if b, err := os.ReadFile(path); err == nil && string(b) == content {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// Nodename reads the node name the agent wrote in dir.
func Nodename(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, NodenameFile))
	if err != nil {
		return "", fmt.Errorf("reading the node name: %w (is calyx-agent running on this node?)", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// MTU reads the pod MTU the agent wrote in dir.
func MTU(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, MTUFile))
	if err != nil {
		return 0, fmt.Errorf("reading the pod MTU: %w (is calyx-agent running on this node?)", err)
	}
	mtu, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || mtu < 68 {
		return 0, fmt.Errorf("%s holds %q, not an MTU", filepath.Join(dir, MTUFile), b)
	}
	return mtu, nil
}
