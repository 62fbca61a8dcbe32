#!/usr/bin/env bash
# calyx end to end on a kind cluster: 1 control plane and 2 workers from
# deploy/kind-config.yaml, without a default CNI, the image loaded from
# `make image`, deploy/calyx.yaml applied, then the reference scenarios
# checked the way a user checks them. Needs docker, kind and kubectl, and
# the network (images busybox and nicolaka/netshoot). Not run in CI.
#
#   make e2e-kind                       # or:
#   IMAGE_TAR=bin/calyx-image.tar test/kind/e2e.sh
#
# Environment: CLUSTER (calyx-e2e), KEEP=1 keeps the cluster afterwards,
# JUNIT (bin/e2e-kind-junit.xml), POD_IMAGE (busybox:1.36),
# TCPDUMP_IMAGE (nicolaka/netshoot:v0.13), CONFORMANCE=0 skips Kubernetes'
# network e2e tests (make conformance's selection, with the lab's images).
# Exits non-zero when a scenario fails; writes JUnit XML to $JUNIT.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-calyx-e2e}
IMAGE_TAR=${IMAGE_TAR:-bin/calyx-image.tar}
JUNIT=${JUNIT:-bin/e2e-kind-junit.xml}
POD_IMAGE=${POD_IMAGE:-busybox:1.36}
TCPDUMP_IMAGE=${TCPDUMP_IMAGE:-nicolaka/netshoot:v0.13}
KEEP=${KEEP:-0}
CONFORMANCE=${CONFORMANCE:-1}
CTX="kind-$CLUSTER"
SERVER_NODE="$CLUSTER-worker"
CLIENT_NODE="$CLUSTER-worker2"

log() { printf '>> %s\n' "$*" >&2; }
die() { printf 'e2e-kind: %s\n' "$*" >&2; exit 1; }
k() { kubectl --context "$CTX" "$@"; }

for tool in docker kind kubectl go; do
	command -v "$tool" >/dev/null || die "$tool is needed on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/)"
done
[ -f "$IMAGE_TAR" ] || die "$IMAGE_TAR is missing: run make image"

cleanup() {
	if [ "$KEEP" = 1 ]; then
		log "keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
	else
		kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
	fi
}

# --- the cluster -------------------------------------------------------------

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
	die "a kind cluster named $CLUSTER exists already: kind delete cluster --name $CLUSTER, or set CLUSTER"
fi
trap cleanup EXIT
log "creating kind cluster $CLUSTER"
# No --wait: without a CNI the nodes stay NotReady until calyx runs.
kind create cluster --name "$CLUSTER" --config deploy/kind-config.yaml
log "loading $IMAGE_TAR"
kind load image-archive "$IMAGE_TAR" --name "$CLUSTER"
log "applying deploy/calyx.yaml"
k apply -f deploy/calyx.yaml
k -n kube-system wait job/calyx-ippool-init --for=condition=Complete --timeout=5m
k -n kube-system rollout status daemonset/calyx-node --timeout=5m
k wait node --all --for=condition=Ready --timeout=3m

# --- scenarios ---------------------------------------------------------------

results=()  # name|seconds|status|output file
outdir=$(mktemp -d)
scenario() {
	local name=$1 fn=$2 start status out
	out="$outdir/$name.log"
	start=$(date +%s)
	log "scenario $name"
	if "$fn" >"$out" 2>&1; then status=pass; else status=fail; fi
	results+=("$name|$(($(date +%s) - start))|$status|$out")
	log "scenario $name: $status"
	if [ "$status" = fail ]; then sed 's/^/   | /' "$out" >&2; fi
}

pod_ip() { k get pod "$1" -o jsonpath='{.status.podIP}'; }

# Busybox's udpsvd and tftpd serve a 2016-byte file, the article's size.
setup_pods() {
	k apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: tftp-server}
spec:
  replicas: 1
  selector: {matchLabels: {app: tftp-server}}
  template:
    metadata: {labels: {app: tftp-server}}
    spec:
      nodeSelector: {kubernetes.io/hostname: $SERVER_NODE}
      containers:
      - name: tftpd
        image: $POD_IMAGE
        command: [sh, -c, "mkdir -p /srv && head -c 2016 /dev/urandom > /srv/file && exec udpsvd -vE 0.0.0.0 69 tftpd -r /srv"]
---
apiVersion: v1
kind: Service
metadata: {name: tftp-server}
spec:
  selector: {app: tftp-server}
  ports: [{name: tftp, port: 69, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: tftp-client}
spec:
  nodeName: $CLIENT_NODE
  containers:
  - name: client
    image: $POD_IMAGE
    command: [sleep, "3600"]
YAML
	k rollout status deployment/tftp-server --timeout=3m
	k wait pod tftp-client --for=condition=Ready --timeout=3m
}

server_pod() { k get pod -l app=tftp-server -o jsonpath='{.items[0].metadata.name}'; }

tftp_get() {
	local from=$1 want got
	want=$(k exec "$(server_pod)" -- md5sum /srv/file | cut -d' ' -f1)
	k exec tftp-client -- rm -f /tmp/file
	k exec tftp-client -- tftp -g -r file -l /tmp/file "$from" 69
	got=$(k exec tftp-client -- md5sum /tmp/file | cut -d' ' -f1)
	echo "server md5 $want, client md5 $got"
	[ "$want" = "$got" ]
}
tftp_pod() { tftp_get "$(pod_ip "$(server_pod)")"; }
tftp_service() { tftp_get "$(k get service tftp-server -o jsonpath='{.spec.clusterIP}')"; }

# The scenarios shared with the lab (test/scenario, Cluster on kind):
# node routes through tunl0, pod to pod across nodes, IPIP on the wire.
# Each subtest becomes a JUnit test case.
shared_scenarios() {
	CLUSTER=$CLUSTER POD_IMAGE=$POD_IMAGE TCPDUMP_IMAGE=$TCPDUMP_IMAGE \
		go test -count=1 -tags kind -v -run TestOnKind ./test/scenario
}
shared_results() {
	local out=$1 line status name secs
	while read -r line; do
		status=${line#--- }; status=${status%%:*}
		name=${line#*TestOnKind/}; name=${name%% *}
		secs=${line##*(}; secs=${secs%s)}
		case $status in PASS) status=pass ;; *) status=fail ;; esac
		results+=("$name|$secs|$status|$out")
	done < <(grep -E -- '--- (PASS|FAIL): TestOnKind/' "$out" | sed 's/^ *//')
}

scenario shared-scenarios shared_scenarios
shared_results "$outdir/shared-scenarios.log"
scenario setup-tftp setup_pods
scenario tftp-pod-ip tftp_pod
scenario tftp-service tftp_service

# Kubernetes' own network e2e tests: the selection `make conformance` runs
# on the lab, with the same suite and the same images, loaded into kind.
conformance() {
	local kit=$outdir/conformance
	go run ./cmd/calyx-lab conformance-kit --out "$kit"
	for img in "$kit"/images/*.tar; do kind load image-archive "$img" --name "$CLUSTER"; done
	kind get kubeconfig --name "$CLUSTER" >"$kit/kubeconfig"
	"$kit/e2e-network.test" --kubeconfig="$kit/kubeconfig" --provider=skeleton \
		--kubectl-path="$(command -v kubectl)" --disable-log-dump --report-dir="$kit/report" \
		--ginkgo.focus="$(paste -sd'|' "$kit/focus.txt")" --ginkgo.v --ginkgo.no-color --ginkgo.timeout=2h
}
conformance_results() {
	local junit=$outdir/conformance/report/junit_01.xml
	[ -f "$junit" ] || return 0
	# One JUnit case per test that ran: its name, seconds and status.
	grep -o '<testcase name="\[It\] [^"]*" classname="[^"]*" status="\(passed\|failed\)" time="[0-9.]*"' "$junit" |
		sed -E 's/<testcase name="\[It\] ([^"]*)" classname="[^"]*" status="([a-z]*)" time="([0-9.]*)"/\1|\3|\2/' |
		while IFS='|' read -r name secs status; do
			case $status in passed) status=pass ;; *) status=fail ;; esac
			echo "$name|$secs|$status|$outdir/conformance.log"
		done
}
if [ "$CONFORMANCE" = 1 ]; then
	scenario conformance conformance
	while IFS= read -r r; do results+=("$r"); done < <(conformance_results)
fi

# --- report ------------------------------------------------------------------

xml_escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g' "$1"; }
failures=0
for r in "${results[@]}"; do
	case $r in *"|fail|"*) failures=$((failures + 1)) ;; esac
done
mkdir -p "$(dirname "$JUNIT")"
{
	echo '<?xml version="1.0" encoding="UTF-8"?>'
	echo "<testsuite name=\"calyx-e2e-kind\" tests=\"${#results[@]}\" failures=\"$failures\">"
	for r in "${results[@]}"; do
		IFS='|' read -r name secs status out <<<"$r"
		echo "  <testcase classname=\"e2e-kind\" name=\"$name\" time=\"$secs\">"
		if [ "$status" = fail ]; then
			echo "    <failure message=\"$name failed\">$(xml_escape "$out")</failure>"
		fi
		echo "    <system-out>$(xml_escape "$out")</system-out>"
		echo "  </testcase>"
	done
	echo "</testsuite>"
} >"$JUNIT"
rm -rf "$outdir"
log "$((${#results[@]} - failures))/${#results[@]} scenarios passed; JUnit in $JUNIT"
[ "$failures" = 0 ]
