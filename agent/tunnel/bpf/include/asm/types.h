/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The kernel's UAPI headers reach <asm/types.h>, which Debian installs only
 * under the host's multiarch directory (/usr/include/x86_64-linux-gnu).
 * Every architecture's copy is the generic one, so pointing at it keeps the
 * BPF build independent of the machine that regenerates the objects.
 */
#include <asm-generic/int-ll64.h>
