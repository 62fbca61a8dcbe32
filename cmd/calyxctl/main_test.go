package main

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestParse: flags go anywhere, as kubectl users write them.
func TestParse(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		operands []string
		output   string
		nic      string
	}{
		{[]string{"ipam", "show"}, []string{"ipam", "show"}, "table", ""},
		{[]string{"-o", "json", "nodes"}, []string{"nodes"}, "json", ""},
		{[]string{"trace", "a/b", "c/d", "-o", "x.svg", "--nic=ens160"}, []string{"trace", "a/b", "c/d"}, "x.svg", "ens160"},
		{[]string{"trace", "a/b", "--output", "yaml", "c/d"}, []string{"trace", "a/b", "c/d"}, "yaml", ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			g := &globals{output: "table"}
			fs := flags("calyxctl", g)
			nic := fs.String("nic", "", "")
			ops, err := parse(fs, tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.operands, ops); diff != "" {
				t.Errorf("operands (-want +got):\n%s", diff)
			}
			if g.output != tc.output || *nic != tc.nic {
				t.Errorf("output %q nic %q, want %q %q", g.output, *nic, tc.output, tc.nic)
			}
		})
	}
}

// TestUsageErrors fail before any API call, saying what to do.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no command given"},
		{[]string{"--nope"}, "flag provided but not defined"},
		{[]string{"-o", "xml", "nodes"}, "use -o table, json or yaml"},
		{[]string{"-o", "x.svg", "nodes"}, "only trace draws diagrams"},
		{[]string{"ipam", "release"}, "ipam release needs --ip ADDR or --from-report FILE"},
		{[]string{"ipam", "release", "--ip", "192.168.29.67", "--from-report", "r.json"}, "not both"},
		{[]string{"ipam", "release", "--from-report", "r.json", "--force"}, "--force goes with --ip only"},
		{[]string{"ipam", "release", "--ip", "fd00::1"}, `--ip "fd00::1" is not an IPv4 address`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			err := run(context.Background(), "calyxctl", tc.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}
