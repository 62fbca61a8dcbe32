#!/usr/bin/env bash
# Runs each fuzz target given as Name:./pkg for FUZZTIME (a duration or a
# count such as 500x). A target fails when go test fails, except for one
# failure that is Go's and not calyx's: with a duration, the fuzzing
# coordinator may report its own deadline ("context deadline exceeded")
# when a worker is still busy as the time runs out (golang/go#75804, fixed
# in Go 1.27). That failure writes no input to testdata/fuzz/; every real
# finding does, so a run that wrote nothing and says only that is a pass.
set -uo pipefail
fuzztime=${FUZZTIME:-10s}
go=${GO:-go}
total=$#
n=0
start=$(date +%s)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for t in "$@"; do
	n=$((n + 1))
	fn=${t%%:*}
	pkg=${t#*:}
	corpus="$pkg/testdata/fuzz/$fn"
	echo ">> [$n/$total] $fn in $pkg for $fuzztime"
	before=$(ls "$corpus" 2>/dev/null)
	if "$go" test -run '^$' -fuzz "^$fn\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$out"; then
		continue
	fi
	after=$(ls "$corpus" 2>/dev/null)
	if [ "$before" = "$after" ] && grep -q '^    context deadline exceeded$' "$out" &&
		[ "$(grep -c -e '^--- FAIL' -e '^    [A-Za-z0-9_]*\.go:[0-9]*:' "$out")" = 1 ]; then
		echo "fuzz: $fn: Go's fuzzing coordinator stopped on its own deadline (golang/go#75804) and wrote no failing input: not a finding"
		continue
	fi
	echo "fuzz: $fn failed: the input is in $corpus/; run 'go test -run $fn $pkg' to replay it"
	exit 1
done
echo ">> fuzz: $total targets in $(($(date +%s) - start))s"
