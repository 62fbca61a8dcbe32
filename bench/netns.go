package bench

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/calyx-net/calyx/agent/nsexec"
)

// randSuffix makes the names of this run's namespaces unique.
func randSuffix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// sh runs a command and returns its output, or an error with its stderr.
func sh(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// ipIn runs `ip args…` in the namespace, named or by path.
func ipIn(netnsName string, args ...string) (string, error) {
	return inNetNSCmd(netnsName, append([]string{"ip"}, args...)...)
}

// inNetNSCmd runs argv in the namespace, named or by path, and returns its
// output.
func inNetNSCmd(netnsName string, argv ...string) (string, error) {
	return sh("nsenter", append([]string{"--net=" + nsexec.NamedPath(netnsName), "--"}, argv...)...)
}

// inNetNS runs fn on a thread switched into the named namespace; children
// forked there (CNI plugins) start in it.
func inNetNS(name string, fn func() error) error {
	return nsexec.RunAt(nsexec.NamedPath(name), fn)
}

// netlinkIn is a netlink handle on the named namespace.
func netlinkIn(name string) (*netlink.Handle, netns.NsHandle, error) {
	h, err := netns.GetFromName(name)
	if err != nil {
		return nil, 0, fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		return nil, 0, fmt.Errorf("netlink in %s: %w", name, err)
	}
	return nl, h, nil
}
