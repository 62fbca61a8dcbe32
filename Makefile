# calyx: IP-in-IP pod networking for Kubernetes.
#
#   make demo    the reference scenario live in a lab of network namespaces
#   make test    every test, privileged ones included (run as root)
#   make build   all binaries into bin/
#   make lint    gofmt and go vet
#   make generate / verify-generate   deepcopy, CRDs and clients from api/

GO ?= go
BIN := bin
CMDS := $(notdir $(wildcard cmd/*))
# The conflist's portmap and loopback ship with calyx, built from the
# containernetworking/plugins pinned in go.mod (tool directives), so the
# chain never meets an older plugin that rejects cniVersion 1.1.0.
CNI_TOOLS := github.com/containernetworking/plugins/plugins/meta/portmap \
	github.com/containernetworking/plugins/plugins/main/loopback

.PHONY: all build demo test lint generate verify-generate clean

# The lab creates network namespaces: root, or sudo (keeping PATH so that
# the first run finds go to build kube-apiserver).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo env PATH="$$PATH")

all: build

build:
	@mkdir -p $(BIN)
	@for c in $(CMDS); do \
		echo ">> go build ./cmd/$$c"; \
		CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/$$c ./cmd/$$c || exit 1; \
	done
	@for t in $(CNI_TOOLS); do \
		echo ">> go build $$t"; \
		CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/$$(basename $$t) $$t || exit 1; \
	done
	@# calyxctl is also a kubectl plugin: `kubectl calyx …` with bin/ in PATH.
	@ln -sf calyxctl $(BIN)/kubectl-calyx

# The reference scenario, live: a TFTP download between pods on two nodes
# of a lab of network namespaces, captured on every hop.
demo: build
	$(SUDO) $(BIN)/calyx-lab demo --bin-dir $(BIN)

# Kubernetes' own sig-network e2e tests (the issue's selection and every
# [sig-network] [Conformance] test the lab meets) against a lab: a table of
# test, result, seconds. Under the machine-wide lab lock.
.PHONY: conformance
conformance: build
	$(SUDO) $(BIN)/calyx-lab conformance --bin-dir $(BIN)

generate:
	hack/update-codegen.sh

# Regenerates into a scratch copy and compares, so a change to api/ without
# `make generate` fails here instead of shipping stale CRDs or clients.
verify-generate:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	OUT=$$tmp hack/update-codegen.sh >/dev/null && \
	for d in api deploy/crds; do \
		diff -ru $$d $$tmp/$$d || { echo "generated files in $$d are stale: run 'make generate' and commit"; exit 1; }; \
	done && echo "generated files are up to date"

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# -p 1: the integration tests each start a kube-apiserver and build real
# binaries; on a 2-core machine running packages one at a time is faster
# than letting them fight. Tests inside a package still run in parallel.
# The fuzz targets get a short bounded run each (FUZZTIME); `make fuzz`
# alone runs them longer.
test: lint verify-generate verify-bpf verify-manifests
	$(GO) test -p 1 -count=1 -timeout 30m ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

TEST_FUZZTIME ?= 3s

clean:
	rm -rf $(BIN)

# The tc programs of the eBPF tunl0 datapath (agent/tunnel/bpf/*.c), compiled
# with bpf2go into committed objects so that `go build` needs no clang.
# Regenerating needs clang-14, llvm-14 (llvm-strip-14) and libbpf-dev.
BPF_PKG := agent/tunnel
BPF_GENERATED := calyx_bpfel.go calyx_bpfel.o calyx_bpfeb.go calyx_bpfeb.o

.PHONY: bpf verify-bpf

bpf:
	cd $(BPF_PKG) && $(GO) generate -run bpf2go .

# Compiles into a scratch directory and compares, so a change to the C
# without `make bpf` fails here instead of shipping stale objects.
verify-bpf:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	(cd $(BPF_PKG) && CALYX_BPF_OUT=$$tmp $(GO) generate -run bpf2go .) && \
	for f in $(BPF_GENERATED); do \
		cmp -s $$tmp/$$f $(BPF_PKG)/$$f || { echo "$(BPF_PKG)/$$f is stale: run 'make bpf' and commit"; exit 1; }; \
	done && echo "BPF objects are up to date"

# deploy/calyx.yaml, what users apply, assembled from deploy/crds and
# deploy/parts by hack/gen-manifests.sh.
.PHONY: manifests verify-manifests image e2e-kind shellcheck

manifests:
	hack/gen-manifests.sh

# Regenerates into a scratch directory and compares, so an edit to
# deploy/parts or the CRDs without `make manifests` fails here.
verify-manifests:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	OUT=$$tmp hack/gen-manifests.sh && \
	{ diff -u deploy/calyx.yaml $$tmp/deploy/calyx.yaml || { echo "deploy/calyx.yaml is stale: run 'make manifests' and commit"; exit 1; }; } && \
	echo "deploy/calyx.yaml is up to date"

# The image the DaemonSet runs, as a tarball that `docker load` and
# `kind load image-archive` accept, built without a Docker daemon.
IMAGE ?= ghcr.io/calyx-net/calyx:dev
IMAGE_TAR ?= $(BIN)/calyx-image.tar

image: build
	$(GO) run ./hack/image --bin-dir $(BIN) --tag $(IMAGE) --out $(IMAGE_TAR)

# A kind cluster (1 control plane, 2 workers) with calyx, and the
# scenarios on it. Needs Docker, kind, kubectl and the network: not in CI.
e2e-kind: image
	IMAGE=$(IMAGE) IMAGE_TAR=$(IMAGE_TAR) test/kind/e2e.sh

shellcheck:
	shellcheck $$(find . -name "*.sh" -not -path "./.git/*" -not -path "./bin/*")

# The benchmark suite: calyx side by side with its references (Debian's
# ptp + host-local, iperf3 over kernel VXLAN and plain routing, ip -batch)
# on a lab of network namespaces; one markdown table on stdout and in
# bench/results.md. Under the machine-wide lab lock: one lab at a time.
# BENCH_FLAGS passes e.g. `-parts cni,burst -runs 5` (see bench/README.md).
.PHONY: bench bench-deps
BENCH_FLAGS ?=

bench-deps:
	@missing=""; \
	[ -x /usr/lib/cni/ptp ] && [ -x /usr/lib/cni/host-local ] || missing="$$missing containernetworking-plugins"; \
	command -v iperf3 >/dev/null || missing="$$missing iperf3"; \
	if [ -n "$$missing" ]; then \
		echo ">> apt-get install$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

bench: build bench-deps
	$(SUDO) $(BIN)/calyx-bench -bin-dir $(BIN) -o bench/results.md $(BENCH_FLAGS)

# Every fuzz target for FUZZTIME each (go test -fuzz takes one package and
# one target per run). Failures land in the package's testdata/fuzz/<Fuzz…>/:
# fix the code and commit the file as a regression seed. The committed
# corpus also runs as plain tests in `go test ./...`. hack/fuzz.sh says why
# one failure of Go's own (no input written) is not a finding.
.PHONY: fuzz
FUZZTIME ?= 10s
FUZZ_TARGETS := \
	FuzzLoadNetConf:./cni-plugin \
	FuzzParsePodArgs:./cni-plugin \
	FuzzParseConf:./ipam/plugin \
	FuzzParseArgs:./ipam/plugin \
	FuzzBPFMapEncoding:./agent/tunnel \
	FuzzNodeAnnotations:./agent/desired

fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) hack/fuzz.sh $(FUZZ_TARGETS)
