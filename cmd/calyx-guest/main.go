// Command calyx-guest is the lab's hand inside a node that is a virtual
// machine: it serves lab/guest's /exec and /capture on the guest's
// underlay address. The lab's initramfs starts it; it is not for clusters.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"

	"github.com/calyx-net/calyx/lab/guest"
)

func main() {
	listen := flag.String("listen", fmt.Sprintf(":%d", guest.Port), "address to serve on (the guest's underlay address)")
	flag.Parse()
	slog.Info("calyx-guest serving", "listen", *listen)
	if err := http.ListenAndServe(*listen, guest.Handler()); err != nil {
		slog.Error("calyx-guest stopped", "err", err)
		os.Exit(1)
	}
}
