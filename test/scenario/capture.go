package scenario

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// CaptureWith runs cmd, a tcpdump with -l that exits after its -c count
// or its own timeout, runs during once tcpdump listens, and returns
// what tcpdump printed.
func CaptureWith(cmd *exec.Cmd, during func()) (string, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("starting tcpdump: %w", err)
	}
	listening := make(chan struct{})
	var errText strings.Builder
	go func() {
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			errText.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "listening on") {
				close(listening)
				once = true
			}
		}
		if !once {
			close(listening)
		}
	}()
	select {
	case <-listening:
	case <-time.After(60 * time.Second):
	}
	during()
	err = cmd.Wait()
	if err != nil {
		return out.String(), fmt.Errorf("tcpdump: %w: %s", err, errText.String())
	}
	return out.String(), nil
}
