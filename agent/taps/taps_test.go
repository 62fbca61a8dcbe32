package taps

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const header = "sk               RefCnt Type Proto  Iface R Rmem   User   Inode\n"

func TestSeeing(t *testing.T) {
	for _, tc := range []struct {
		name, table string
		want        bool
		inode       uint64
	}{
		{"none", header, false, 0},
		{"tcpdump on tunl0", header + "ffff8f0b4c5e3800 3      3    0003   7     1 0      0      1001\n", true, 1001},
		{"tcpdump on the NIC only", header + "ffff8f0b4c5e3800 3      3    0003   2     1 0      0      1002\n", false, 0},
		{"tcpdump -i any", header + "ffff8f0b4c5e3800 3      3    0003   0     1 0      0      1003\n", true, 1003},
		{"an unbound socket with no protocol receives nothing", header + "ffff8f0b4c5e3800 2      3    0000   0     0 0      0      1004\n", false, 0},
		{"a DHCP client on the NIC, then tcpdump on tunl0", header +
			"ffff8f0b4c5e3800 3      2    0800   2     1 0      0      1005\n" +
			"ffff8f0b4c5e3c00 3      3    0003   7     1 0      0      1006\n", true, 1006},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socks, err := Parse(strings.NewReader(tc.table))
			if err != nil {
				t.Fatal(err)
			}
			s, got := Seeing(socks, 7)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("seeing tunl0 (index 7) (-want +got):\n%s", diff)
			}
			if s.Inode != tc.inode {
				t.Errorf("socket inode %d, want %d", s.Inode, tc.inode)
			}
		})
	}
}

func TestParseRefusesGarbage(t *testing.T) {
	if _, err := Parse(strings.NewReader(header + "ffff 3 3 0003 x 1 0 0 1\n")); err == nil {
		t.Error("Parse took an interface index of x")
	}
	if _, err := Parse(strings.NewReader(header + "ffff 3 3\n")); err == nil {
		t.Error("Parse took a line of 3 fields")
	}
}
