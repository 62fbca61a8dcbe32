package conformance

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// The suite's JUnit report from a real run on the lab (testdata, trimmed):
// each test of the selection found by its name, with its outcome and time;
// a test the focus left out is "skipped"; one absent is "not run".
func TestReadReport(t *testing.T) {
	names := append(slicesClone(Bounded), "[sig-network] Services should serve a basic endpoint from pods [Conformance]", "[sig-network] no such test")
	got, err := readReport("testdata", names)
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		got[i].Failure = firstLine(got[i].Failure)
	}
	want := []Result{
		{Name: Bounded[0], Outcome: "passed", Seconds: 16.295826088},
		{Name: Bounded[1], Outcome: "passed", Seconds: 14.386234929},
		{Name: Bounded[2], Outcome: "passed", Seconds: 14.303485568},
		{Name: Bounded[3], Outcome: "failed", Seconds: 84.920561341, Failure: got[3].Failure},
		{Name: names[4], Outcome: "skipped"},
		{Name: names[5], Outcome: "not run"},
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0, 1e-6)); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if got[3].Failure == "" {
		t.Error("the failed test's message is empty")
	}
	table := Table(got, 3*time.Minute)
	if !strings.Contains(table, "\n3 passed, 1 failed, 2 not run (3m0s)\n") {
		t.Errorf("the table's summary:\n%s", table)
	}
}

// The progress lines follow() prints from the suite's -v output, names as
// they start and outcomes as they end.
func TestFollow(t *testing.T) {
	f, err := os.Open("testdata/e2e.log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out strings.Builder
	follow(f, &out, 4)
	want := `  [1/4] [sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http [Conformance] [NodeConformance]: passed in 16.296 s
  [2/4] [sig-network] Networking Granular Checks: Pods should function for node-pod communication: udp [LinuxOnly] [Conformance] [NodeConformance]: failed in 84.921 s
  [3/4] [sig-network] Networking Granular Checks: Pods should function for node-pod communication: http [LinuxOnly] [Conformance] [NodeConformance]: passed in 14.303 s
  [4/4] [sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp [Conformance] [NodeConformance]: passed in 14.386 s
`
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("progress (-want +got):\n%s", diff)
	}
}

// Every focus matches exactly its test, whose text ginkgo matches with
// the suite's description in front.
func TestFocus(t *testing.T) {
	re := regexp.MustCompile(Focus(Selection))
	for _, n := range Selection {
		if !re.MatchString("Kubernetes e2e suite " + n) {
			t.Errorf("the focus does not match %q", n)
		}
	}
	for _, n := range []string{
		"Kubernetes e2e suite [sig-network] Conntrack should be able to preserve UDP traffic when server pod cycles for a ClusterIP service with InternalTrafficPolicy set to Local",
		"Kubernetes e2e suite [sig-network] Networking Granular Checks: Services should function for pod-Service: sctp [Feature:SCTPConnectivity]",
	} {
		if re.MatchString(n) {
			t.Errorf("the focus matches %q, outside the selection", n)
		}
	}
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }
