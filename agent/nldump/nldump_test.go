package nldump

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
)

func TestRetry(t *testing.T) {
	errOther := errors.New("no such device")
	interrupted := fmt.Errorf("listing: %w", netlink.ErrDumpInterrupted)
	for _, tc := range []struct {
		name      string
		results   []error // what each call returns, in order; nil is a complete dump
		wantCalls int
		wantErr   error
	}{
		{"complete at once", []error{nil}, 1, nil},
		{"interrupted, then complete", []error{interrupted, interrupted, nil}, 3, nil},
		{"another error ends it", []error{interrupted, errOther}, 2, errOther},
		{"interrupted every time", []error{interrupted, interrupted, interrupted, interrupted, interrupted, nil}, Attempts, netlink.ErrDumpInterrupted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			v, err := Retry(func() (int, error) {
				err := tc.results[calls]
				calls++
				return calls, err
			})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff([]int{tc.wantCalls, tc.wantCalls}, []int{calls, v}); diff != "" {
				t.Errorf("calls, and the result returned (the last call's) (-want +got):\n%s", diff)
			}
		})
	}
}
