package tunnel

// The eBPF datapath's programs, compiled from bpf/calyx.c into calyx_bpfel.o
// and calyx_bpfeb.o with the Go bindings beside them (`make bpf`). The
// objects are committed: building the agent needs no clang. CALYX_BPF_OUT
// lets `make verify-bpf` compile into a scratch directory and compare.
//
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -output-dir=${CALYX_BPF_OUT} -cflags "-O2 -Wall -Werror -Ibpf/include" -type config -type lpm_key -type counters calyx bpf/calyx.c
