package plugin_test

import (
	"fmt"
	"sort"
	"testing"
	"time"
)

// BenchmarkAdd measures what a pod start pays for its address: one
// calyx-ipam process per ADD, as a runtime runs it, against a real API
// server. It reports p50/p99 latency and allocations per second; DELs run
// outside the timer.
//
//	go test -run '^$' -bench Add -benchtime 200x ./ipam/plugin/
func BenchmarkAdd(b *testing.B) {
	e := newEnv(b, pool("default-ipv4-ippool", "192.168.0.0/16", 26))
	conf := e.conf("1.1.0", nil)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		begin := time.Now()
		if _, err := e.add(conf, fmt.Sprintf("bench-%d", i)); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(begin))
	}
	b.StopTimer()
	report(b, lat)
	delLat := make([]time.Duration, 0, b.N)
	for i := 0; i < b.N; i++ {
		begin := time.Now()
		if err := e.run("DEL", conf, fmt.Sprintf("bench-%d", i)); err != nil {
			b.Fatal(err)
		}
		delLat = append(delLat, time.Since(begin))
	}
	sort.Slice(delLat, func(i, j int) bool { return delLat[i] < delLat[j] })
	b.ReportMetric(float64(delLat[len(delLat)/2].Microseconds())/1000, "del-p50-ms")
}

func report(b *testing.B, lat []time.Duration) {
	var total time.Duration
	for _, l := range lat {
		total += l
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(len(lat))/total.Seconds(), "allocs/s")
}
