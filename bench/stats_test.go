package bench

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestRowMarkdown(t *testing.T) {
	tests := []struct {
		name string
		row  Row
		want string
	}{
		{
			name: "ratio goal met, median with spread",
			row: Row{Part: "cni", Metric: "ADD p50", Unit: "ms", Calyx: Of(12, 10, 30),
				RefName: "ptp", Ref: Of(10, 9, 11), Goal: RatioAtMost(1.5)},
			want: "| cni | ADD p50 | 12.0 (10.0–30.0) ms | ptp: 10.0 (9.00–11.0) ms | 1.20× | ratio ≤ 1.50× | yes |\n",
		},
		{
			name: "absolute goal missed says by how much",
			row:  Row{Part: "burst", Metric: "100 pods", Unit: "s", Calyx: Of(15), Goal: AtMost(10, "s")},
			want: "| burst | 100 pods | 15.0 s | none | — | ≤ 10.0 s | **no**: 1.50× the goal (+5.00 s) |\n",
		},
		{
			name: "share of the reference missed",
			row: Row{Part: "datapath", Metric: "TCP", Unit: "Gbit/s", Calyx: Of(8, 7),
				RefName: "plain", Ref: Of(10), Goal: RatioAtLeast(0.9, "≥ 90% of plain")},
			want: "| datapath | TCP | 7.50 (7.00–8.00) Gbit/s | plain: 10.0 Gbit/s | 0.75× | ≥ 90% of plain | **no**: 17% short |\n",
		},
		{
			name: "a narrow miss is not rounded to none",
			row: Row{Part: "datapath", Metric: "TCP", Unit: "Gbit/s", Calyx: Of(8.96),
				RefName: "plain", Ref: Of(10), Goal: RatioAtLeast(0.9, "≥ 90% of plain")},
			want: "| datapath | TCP | 8.96 Gbit/s | plain: 10.0 Gbit/s | 0.896× | ≥ 90% of plain | **no**: 0.44% short |\n",
		},
		{
			name: "failed part has no figures",
			row:  Row{Part: "scale", Metric: "FAILED: boom"},
			want: "| scale | FAILED: boom | — | none | — | — | — |\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.row.markdown()); diff != "" {
				t.Errorf("markdown (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 200; i++ {
		ds = append(ds, time.Duration(201-i)*time.Millisecond)
	}
	got := []time.Duration{percentile(ds, 50), percentile(ds, 99), percentile(ds, 100), percentile(nil, 50)}
	want := []time.Duration{100 * time.Millisecond, 198 * time.Millisecond, 200 * time.Millisecond, 0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("percentiles (-want +got):\n%s", diff)
	}
}

func TestSelectParts(t *testing.T) {
	tests := []struct {
		in      []string
		want    []string
		wantErr bool
	}{
		{in: nil, want: PartNames()},
		{in: []string{"scale", "cni"}, want: []string{"scale", "cni"}},
		{in: []string{"nope"}, wantErr: true},
	}
	for _, tt := range tests {
		parts, err := selectParts(tt.in)
		if (err != nil) != tt.wantErr {
			t.Fatalf("selectParts(%q): err %v, want error %v", tt.in, err, tt.wantErr)
		}
		var got []string
		for _, p := range parts {
			got = append(got, p.Name)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("selectParts(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}
