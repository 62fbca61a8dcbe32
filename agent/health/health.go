// Package health keeps the agent's readiness as a set of named checks, each
// failing with a reason a person can act on, and serves /readyz and
// /livez.
package health

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Health is the state of the agent's checks. The zero value is not usable;
// call New.
type Health struct {
	mu       sync.Mutex
	checks   map[string]string // name → reason; "" is passing
	order    []string
	lastBeat time.Time
	// stall is how long the main loop may go without a beat before
	// /livez fails and the kubelet restarts the agent.
	stall time.Duration
	now   func() time.Time
}

// New returns a Health with the given checks, all failing with "not yet
// checked" until Set says otherwise: the agent is not ready until every one
// has passed.
func New(stall time.Duration, checks ...string) *Health {
	h := &Health{checks: map[string]string{}, stall: stall, now: time.Now}
	for _, c := range checks {
		h.checks[c] = "not checked yet"
		h.order = append(h.order, c)
	}
	h.lastBeat = h.now()
	return h
}

// Set records the outcome of a check: err nil passes. It reports whether
// the reason changed, so callers log a failure once rather than on every
// retry.
func (h *Health) Set(check string, err error) bool {
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old, ok := h.checks[check]
	if !ok {
		h.order = append(h.order, check)
	}
	h.checks[check] = reason
	return !ok || old != reason
}

// Beat says the main loop is alive.
func (h *Health) Beat() {
	h.mu.Lock()
	h.lastBeat = h.now()
	h.mu.Unlock()
}

// Ready reports whether every check passes, and the failing ones as
// "check: reason".
func (h *Health) Ready() (bool, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var failing []string
	for _, c := range h.order {
		if r := h.checks[c]; r != "" {
			failing = append(failing, c+": "+r)
		}
	}
	return len(failing) == 0, failing
}

// Live reports whether the main loop beat recently.
func (h *Health) Live() (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if since := h.now().Sub(h.lastBeat); h.stall > 0 && since > h.stall {
		return false, fmt.Sprintf("main loop stalled: no progress for %s", since.Round(time.Second))
	}
	return true, ""
}

// Checks is every check with its reason ("" passing), in order.
func (h *Health) Checks() map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]string, len(h.checks))
	for c, r := range h.checks {
		out[c] = r
	}
	return out
}

// Register adds /readyz and /livez to mux. /readyz answers 200 "ok" or 503
// with one failing check per line; ?verbose lists every check.
func (h *Health) Register(mux *http.ServeMux) {
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, failing := h.Ready()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready\n%s\n", strings.Join(failing, "\n"))
		} else {
			fmt.Fprintln(w, "ok")
		}
		if _, verbose := r.URL.Query()["verbose"]; verbose {
			checks := h.Checks()
			names := make([]string, 0, len(checks))
			for c := range checks {
				names = append(names, c)
			}
			slices.Sort(names)
			for _, c := range names {
				if checks[c] == "" {
					fmt.Fprintf(w, "[+] %s ok\n", c)
				} else {
					fmt.Fprintf(w, "[-] %s: %s\n", c, checks[c])
				}
			}
		}
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if ok, why := h.Live(); !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, why)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}
