package lab

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// What kube-proxy v1.37 in iptables mode wrote on learn-k8s-3 for the
// article's Service, trimmed.
const natSave = `*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SEP-NI4RHX62UL7S445W -s 192.168.183.193/32 -m comment --comment "default/tftp-server:udp-69" -j KUBE-MARK-MASQ
-A KUBE-SEP-NI4RHX62UL7S445W -p udp -m comment --comment "default/tftp-server:udp-69" -m udp -j DNAT --to-destination 192.168.183.193:69
-A KUBE-SEP-ZZZZ -p udp -m comment --comment "default/tftp-server:udp-69" -m udp -j DNAT --to-destination 192.168.83.2:69
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SERVICES -d 10.96.62.142/32 -p udp -m comment --comment "default/tftp-server:udp-69 cluster IP" -m udp --dport 69 -j KUBE-SVC-6HFJQMI52OVO2RJO
-A KUBE-SVC-6HFJQMI52OVO2RJO ! -s 192.168.0.0/16 -d 10.96.62.142/32 -p udp -m comment --comment "default/tftp-server:udp-69 cluster IP" -m udp --dport 69 -j KUBE-MARK-MASQ
-A KUBE-SVC-6HFJQMI52OVO2RJO -m comment --comment "default/tftp-server:udp-69 -> 192.168.183.193:69" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-NI4RHX62UL7S445W
-A KUBE-SVC-6HFJQMI52OVO2RJO -m comment --comment "default/tftp-server:udp-69 -> 192.168.83.2:69" -j KUBE-SEP-ZZZZ
COMMIT
`

func TestNATChainPath(t *testing.T) {
	tests := []struct {
		name, service, ip string
		wantChains        string
		wantRules         int
	}{
		{"the article's service, two endpoints", "default/tftp-server", "10.96.62.142",
			"KUBE-SERVICES → KUBE-SVC-6HFJQMI52OVO2RJO → KUBE-SEP-NI4RHX62UL7S445W, KUBE-SEP-ZZZZ", 6},
		{"no rule for the service yet", "default/tftp-server", "10.96.62.143", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chains, rules := NATChainPath(natSave, tt.service, tt.ip)
			if diff := cmp.Diff(tt.wantChains, chains); diff != "" {
				t.Errorf("chains (-want +got):\n%s", diff)
			}
			if len(rules) != tt.wantRules {
				t.Errorf("%d rules, want %d:\n%v", len(rules), tt.wantRules, rules)
			}
		})
	}
}
