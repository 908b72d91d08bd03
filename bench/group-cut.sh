#!/usr/bin/env bash
# What a replication group's cuts cost its guests (issue 6). `lifeboat up` with three protected
# VMs in one replication group; fio writes 4 KiB random blocks at queue depth 1 (paced at RATE)
# to each VM's disk through the agent's real NBD disk servers, RUNTIME seconds twice: without
# cuts (the peer: the same writes, no group points), then with a crash-consistent group cut
# every CUT_MS (hold every journal, mark each, release). Prints the write latency (fio's
# completion latency, ms: median of the VMs' p50, worst p99, worst max) of both phases and the
# cut's own round trip (the CLI: `lifeboat group cut`), p50 / p99 / max.
#
#   cargo build --release -p lifeboat && bench/group-cut.sh
#
# Environment: LIFEBOAT (binary, default target/release/lifeboat), RUNTIME=20, RATE=2m (fio
# --rate per VM), CUT_MS=200.
set -euo pipefail
cd "$(dirname "$0")/.."
LB=${LIFEBOAT:-target/release/lifeboat}
RUNTIME=${RUNTIME:-20}
RATE=${RATE:-2m}
CUT_MS=${CUT_MS:-200}
command -v fio >/dev/null || { echo "fio missing (scripts/install-deps)" >&2; exit 1; }
[ -x "$LB" ] || { echo "$LB missing: cargo build --release -p lifeboat" >&2; exit 1; }

D=$(mktemp -d /tmp/lb-groupcut.XXXXXX)
UP=
cleanup() {
  [ -n "$UP" ] && kill "$UP" 2>/dev/null && wait "$UP" 2>/dev/null
  rm -rf "$D"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$LB" up --accel tcg --listen "127.0.0.1:$PORT" --data "$D/lb" >"$D/up.log" 2>&1 &
UP=$!
export LIFEBOAT_VAULT="http://127.0.0.1:$PORT" LIFEBOAT_TOKEN_FILE="$D/lb/vault/token"
for _ in $(seq 300); do
  [ -s "$D/lb/vault/token" ] && [ "$("$LB" hosts --output json 2>/dev/null | grep -c '"name"')" -ge 2 ] && break
  sleep 0.1
done

VMS="ga gb gc"
for vm in $VMS; do
  truncate -s 256M "$D/$vm.img"
  printf '{"name":"%s","vcpus":1,"memory_mib":32,"disks":[{"source":{"file":{"path":"%s","format":"raw"}}}],"serial_log":"%s"}' \
    "$vm" "$D/$vm.img" "$D/$vm.serial" >"$D/$vm.json"
  "$LB" vm create "$vm" --region primary --definition "$D/$vm.json" >/dev/null
  "$LB" protect "$vm" --target-region secondary --output json >/dev/null
done
"$LB" group create bench $VMS >/dev/null

# fio on every VM at once; waits for those fio processes only.
run_fio() {
  local phase=$1 pids=()
  for vm in $VMS; do
    fio --name="$phase-$vm" --ioengine=nbd \
      --uri="nbd+unix:///disk0?socket=$D/lb/agents/primary/vms/$vm/nbd.sock" \
      --rw=randwrite --bs=4k --iodepth=1 --rate="$RATE" --time_based --runtime="$RUNTIME" \
      --size=256m --output-format=json --output="$D/$phase-$vm.json" >/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
}

run_fio none
: >"$D/cuts.txt"
(
  while :; do
    t0=$(date +%s%N)
    "$LB" group cut bench >/dev/null 2>>"$D/cut-errors.txt" || echo fail >>"$D/cut-fails.txt"
    echo $(( ($(date +%s%N) - t0) / 1000 )) >>"$D/cuts.txt"
    sleep "$(awk -v ms="$CUT_MS" 'BEGIN { print ms / 1000 }')"
  done
) &
CUTTER=$!
run_fio cuts
kill "$CUTTER" 2>/dev/null || true
wait "$CUTTER" 2>/dev/null || true

python3 - "$D" "$VMS" "$CUT_MS" <<'EOF'
import json, statistics, sys
d, vms = sys.argv[1], sys.argv[2].split()
def lat(phase):
    p50s, p99s, maxs, ios = [], [], [], 0
    for vm in vms:
        j = json.load(open(f"{d}/{phase}-{vm}.json"))["jobs"][0]["write"]
        c = j["clat_ns"]
        p50s.append(c["percentile"]["50.000000"] / 1e6)
        p99s.append(c["percentile"]["99.000000"] / 1e6)
        maxs.append(c["max"] / 1e6)
        ios += j["total_ios"]
    return statistics.median(p50s), max(p99s), max(maxs), ios
print("| phase | writes | p50 ms (median of VMs) | p99 ms (worst VM) | max ms |")
print("|---|---:|---:|---:|---:|")
for phase, name in (("none", "no cuts (peer)"), ("cuts", "a group cut every " + sys.argv[3] + " ms")):
    p50, p99, mx, n = lat(phase)
    print(f"| {name} | {n} | {p50:.3f} | {p99:.3f} | {mx:.3f} |")
cuts = sorted(int(x) / 1000 for x in open(f"{d}/cuts.txt").read().split())
if cuts:
    q = lambda p: cuts[min(len(cuts) - 1, int(p * len(cuts)))]
    print(f"\ncuts: {len(cuts)}; round trip (CLI, ms): p50 {q(0.5):.1f}, p99 {q(0.99):.1f}, max {cuts[-1]:.1f}")
try:
    fails = len(open(f"{d}/cut-fails.txt").read().split())
except FileNotFoundError:
    fails = 0
print(f"failed cuts: {fails}")
EOF
