package health

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func get(t *testing.T, mux *http.ServeMux, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

func TestReadiness(t *testing.T) {
	h := New(time.Minute, "underlay", "apiserver")
	mux := http.NewServeMux()
	h.Register(mux)

	steps := []struct {
		set      func()
		wantCode int
		wantBody string
	}{
		{func() {}, 503, "not ready\nunderlay: not checked yet\napiserver: not checked yet\n"},
		{func() { h.Set("underlay", errors.New("no interface matches ^eth9$")) }, 503, "not ready\nunderlay: no interface matches ^eth9$\napiserver: not checked yet\n"},
		{func() { h.Set("underlay", nil); h.Set("apiserver", nil) }, 200, "ok\n"},
		{func() { h.Set("sync", errors.New("programming routes: tunl0 missing")) }, 503, "not ready\nsync: programming routes: tunl0 missing\n"},
	}
	for i, s := range steps {
		s.set()
		code, body := get(t, mux, "/readyz")
		if diff := cmp.Diff([]any{s.wantCode, s.wantBody}, []any{code, body}); diff != "" {
			t.Errorf("step %d: /readyz (-want +got):\n%s", i, diff)
		}
	}
	if _, body := get(t, mux, "/readyz?verbose"); !cmp.Equal(body, "not ready\nsync: programming routes: tunl0 missing\n[+] apiserver ok\n[-] sync: programming routes: tunl0 missing\n[+] underlay ok\n") {
		t.Errorf("verbose body = %q", body)
	}
	if changed := h.Set("sync", errors.New("programming routes: tunl0 missing")); changed {
		t.Error("Set with the same reason reported a change")
	}
}

func TestLiveness(t *testing.T) {
	now := time.Unix(1000, 0)
	h := New(time.Minute, "x")
	h.now = func() time.Time { return now }
	h.Beat()
	mux := http.NewServeMux()
	h.Register(mux)
	if code, _ := get(t, mux, "/livez"); code != 200 {
		t.Errorf("/livez = %d just after a beat", code)
	}
	now = now.Add(2 * time.Minute)
	if code, body := get(t, mux, "/livez"); code != 503 || body != "main loop stalled: no progress for 2m0s\n" {
		t.Errorf("/livez after a stall = %d %q", code, body)
	}
}
