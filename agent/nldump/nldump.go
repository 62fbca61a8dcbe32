// Package nldump reads netlink dumps that the kernel interrupted. A dump
// (addresses, routes, links) that the table changed under is flagged
// NLM_F_DUMP_INTR, and vishvananda/netlink returns ErrDumpInterrupted
// without the partial result: on a node where pods come and go, the only
// answer is to read again.
package nldump

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// Attempts is how often Retry reads before it gives up with the kernel's
// error: a table that changes under five dumps in a row is being
// rewritten, and the caller's next sync reads it again anyway.
const Attempts = 5

// Retry runs dump until it is not interrupted, at most Attempts times, and
// returns its last result. Any other error ends it at once.
func Retry[T any](dump func() (T, error)) (T, error) {
	var v T
	var err error
	for range Attempts {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}
