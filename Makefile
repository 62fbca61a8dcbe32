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

.PHONY: all build test lint generate verify-generate clean

all: build

build:
	@mkdir -p $(BIN)
	@for c in $(CMDS); do \
		echo ">> go build ./cmd/$$c"; \
		CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/$$c ./cmd/$$c || exit 1; \
	done

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
test: lint verify-generate
	$(GO) test -p 1 -count=1 -timeout 30m ./...

clean:
	rm -rf $(BIN)
