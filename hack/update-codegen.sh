#!/usr/bin/env bash
# Regenerates everything derived from api/v1alpha1: deepcopy code and CRD YAML
# (controller-gen), and the typed clientset, listers and informers the agent
# and the IPAM store use (k8s.io/code-generator). Run through `make generate`.
#
# With OUT=DIR it writes into a copy rooted at DIR instead of the work tree;
# `make verify-generate` uses that to fail when committed files are stale.
set -euo pipefail

CONTROLLER_TOOLS_VERSION=v0.23.0
CODE_GENERATOR_VERSION=v0.37.2
MODULE=github.com/calyx-net/calyx

root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root}
cd "$root"

if [ "$out" != "$root" ]; then
	mkdir -p "$out"
	# The generators read the sources, so the copy carries them and go.mod.
	cp -r go.mod go.sum api hack "$out"/
	mkdir -p "$out/deploy"
	cd "$out"
fi

echo ">> controller-gen $CONTROLLER_TOOLS_VERSION: deepcopy and CRDs"
rm -rf deploy/crds
go run sigs.k8s.io/controller-tools/cmd/controller-gen@"$CONTROLLER_TOOLS_VERSION" \
	object:headerFile=hack/boilerplate.go.txt \
	crd:crdVersions=v1 \
	paths=./api/... \
	output:crd:artifacts:config=deploy/crds

gen() { go run k8s.io/code-generator/cmd/"$1"@"$CODE_GENERATOR_VERSION" "${@:2}"; }
client=api/client
rm -rf "$client"
echo ">> client-gen, lister-gen, informer-gen $CODE_GENERATOR_VERSION: typed clients"
gen client-gen --go-header-file hack/boilerplate.go.txt \
	--input-base "" --input "$MODULE/api/v1alpha1" \
	--clientset-name versioned \
	--output-dir "$client/clientset" --output-pkg "$MODULE/$client/clientset"
gen lister-gen --go-header-file hack/boilerplate.go.txt \
	--output-dir "$client/listers" --output-pkg "$MODULE/$client/listers" \
	./api/v1alpha1
gen informer-gen --go-header-file hack/boilerplate.go.txt \
	--versioned-clientset-package "$MODULE/$client/clientset/versioned" \
	--listers-package "$MODULE/$client/listers" \
	--output-dir "$client/informers" --output-pkg "$MODULE/$client/informers" \
	./api/v1alpha1
