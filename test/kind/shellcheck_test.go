// Package kind holds the end-to-end run on a kind cluster (e2e.sh, make
// e2e-kind), which needs Docker and is not run by the tests; what they
// check here is that every shell script of the repo passes shellcheck.
package kind

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestShellcheck(t *testing.T) {
	bin, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Fatalf("shellcheck is needed (apt-get install shellcheck): %v", err)
	}
	root := filepath.Join("..", "..")
	var scripts []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".sh") || shellShebang(p)) {
			scripts = append(scripts, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(scripts) < 3 {
		t.Fatalf("found only %v; expected hack/*.sh and test/kind/e2e.sh", scripts)
	}
	out, err := exec.Command(bin, scripts...).CombinedOutput()
	if err != nil {
		t.Fatalf("shellcheck %s: %v\n%s", strings.Join(scripts, " "), err, out)
	}
	t.Logf("shellcheck clean: %s", strings.Join(scripts, " "))
}

// shellShebang says whether the file at p is a shell script without the
// .sh suffix, such as .ci/run.
func shellShebang(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 64)
	n, _ := f.Read(head)
	line, _, _ := strings.Cut(string(head[:n]), "\n")
	return strings.HasPrefix(line, "#!") && (strings.HasSuffix(line, "/bash") || strings.HasSuffix(line, " bash") || strings.HasSuffix(line, "/sh"))
}
