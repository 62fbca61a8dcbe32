/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* See types.h beside this file. */
#include <asm-generic/bitsperlong.h>
