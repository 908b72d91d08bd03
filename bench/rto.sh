#!/usr/bin/env bash
# RTO of a failover through `lifeboat up`: from the start of `lifeboat failover` to the guest's
# first serial output at the secondary ("seqwriter boot 2 after seq M", printed once SeaBIOS has
# booted the guest from the recovered disk), for disks of SIZES GiB, sparse (only the guest's
# code and its 1 MiB ring are written) and filled (every 4 MiB chunk written with data unique
# per chunk: the recovered disk is served from the store chunk by chunk, never copied first).
# Then, for the 1 GiB filled disk, background hydration (disk local at the target) against
# `qemu-img convert -O raw` of the same source image, same run.
#
#   cargo build --release -p lifeboat && bench/rto.sh
#
# Environment: RUNS=3 (failovers per case), SIZES="1 20", FILLS="sparse filled",
# LIFEBOAT=target/release/lifeboat, WORKDIR=bench/out, LIFEBOAT_ACCEL=tcg (the guest is tiny
# real-mode code; SeaBIOS boots it faster under TCG than under KVM on this kind of machine).
# Each run is a fresh `lifeboat up`: create, start, protect (initial copy), let it replicate 3 s,
# fail over to latest-processed (the source left running: it is fenced), time the first serial
# line. The failed-over disk is not committed (a 20 GiB filled disk would need 20 GiB more).
set -euo pipefail
RUNS="${RUNS:-3}"
SIZES="${SIZES:-1 20}"
FILLS="${FILLS:-sparse filled}"
LB="${LIFEBOAT:-target/release/lifeboat}"
WORKBASE="${WORKDIR:-bench/out}"
export LIFEBOAT_ACCEL="${LIFEBOAT_ACCEL:-tcg}"
for t in qemu-img python3 as ld curl; do command -v "$t" >/dev/null || { echo "$t missing (scripts/install-deps)" >&2; exit 1; }; done
[ -x "$LB" ] || { echo "$LB missing: cargo build --release -p lifeboat" >&2; exit 1; }
LB="$(cd "$(dirname "$LB")" && pwd)/$(basename "$LB")"
mkdir -p "$WORKBASE"
work="$(mktemp -d "$(cd "$WORKBASE" && pwd)/rto.XXXXXX")"
up=""
stop_up() { if [ -n "$up" ]; then kill -TERM "$up" 2>/dev/null || true; wait "$up" 2>/dev/null || true; up=""; fi; }
trap 'stop_up; rm -rf "$work"' EXIT
guest/build.sh "$work" >/dev/null
port=$((20000 + RANDOM % 20000))
export LIFEBOAT_VAULT="http://127.0.0.1:$port"

fill() { # image, size GiB: every 4 MiB chunk distinct (a counter in each 4 KiB), compressible
  python3 - "$1" "$2" <<'PY'
import os, sys
path, gib = sys.argv[1], int(sys.argv[2])
base = os.urandom(4096)
with open(path, "r+b") as f:
    f.seek(1 << 20)  # the guest's code and ring live in the first MiB
    chunk = 4 << 20
    for c in range((gib << 30) // chunk):
        if c == 0:
            f.seek(chunk)
            continue
        blocks = bytearray()
        for b in range(chunk // 4096):
            blocks += (c * 1024 + b).to_bytes(8, "little") + base[8:]
        f.write(blocks)
PY
}

ms() { python3 -c "import time; print(int(time.time()*1000))"; }

declare -A rto
declare -A job
hyd_s=""; conv_s=""
for size in $SIZES; do
  for fillkind in $FILLS; do
    for r in $(seq "$RUNS"); do
      d="$work/up"; rm -rf "$d" "$work/vm.img"; mkdir -p "$d"
      truncate -s "${size}G" "$work/vm.img"
      dd if="$work/seqwriter.bin" of="$work/vm.img" conv=notrunc status=none
      [ "$fillkind" = filled ] && fill "$work/vm.img" "$size"
      sync
      "$LB" up --data "$d" --listen "127.0.0.1:$port" >"$work/up.out" 2>"$work/up.log" &
      up=$!
      export LIFEBOAT_TOKEN_FILE="$d/vault/token"
      for _ in $(seq 300); do [ "$("$LB" hosts --output json 2>/dev/null | grep -c '"region"')" = 2 ] && break; sleep 0.1; done
      cat >"$work/vm.json" <<EOF
{"name": "rto", "vcpus": 1, "memory_mib": 32,
 "disks": [{"source": {"file": {"path": "$work/vm.img", "format": "raw"}}}],
 "serial_log": "$work/unused.serial"}
EOF
      "$LB" vm create rto --region primary --definition "$work/vm.json" >/dev/null
      "$LB" vm start rto >/dev/null
      "$LB" protect rto --target-region secondary --output json >/dev/null
      sleep 3
      serial="$d/agents/secondary/recovered/rto/serial.log"
      t0=$(ms)
      "$LB" failover rto --recovery-point latest-processed --output json >"$work/job.json" || {
        echo "failover failed:"; cat "$work/job.json"; tail -20 "$work/up.log"; exit 1; }
      t1=$(ms)
      for _ in $(seq 6000); do grep -q "seqwriter boot" "$serial" 2>/dev/null && break; sleep 0.005; done
      t2=$(ms)
      grep -q "seqwriter boot" "$serial" || { echo "no boot line in $serial" >&2; exit 1; }
      key="${size}G-$fillkind"
      rto[$key]+="$(( t2 - t0 )) "
      job[$key]+="$(( t1 - t0 )) "
      echo "$key run $r: failover job $(( t1 - t0 )) ms, first serial output $(( t2 - t0 )) ms after the command"
      if [ "$size" = 1 ] && [ "$fillkind" = filled ] && [ "$r" = 1 ]; then
        agent=$("$LB" hosts --output json | python3 -c "import json,sys; print([h['url'] for h in json.load(sys.stdin) if h['region']=='secondary'][0])")
        for _ in $(seq 12000); do
          st=$(curl -sf -H "Authorization: Bearer $(cat "$LIFEBOAT_TOKEN_FILE")" "$agent/agent/v1/recovered/rto")
          if echo "$st" | python3 -c "import json,sys; sys.exit(0 if json.load(sys.stdin)['hydrated'] else 1)"; then break; fi
          sleep 0.05
        done
        hyd_s=$(echo "$st" | python3 -c "import json,sys; print(round(json.load(sys.stdin)['hydration_secs'], 3))")
        rm -f "$work/conv.img"; sync
        c0=$(ms); qemu-img convert -f raw -O raw "$work/vm.img" "$work/conv.img"; sync; c1=$(ms)
        conv_s=$(python3 -c "print(($c1-$c0)/1000)")
        rm -f "$work/conv.img"
        echo "1G-filled: hydration ran $hyd_s s (the agent's measure of its runs; it starts 3 s after the disks are served); qemu-img convert $conv_s s"
      fi
      stop_up
    done
  done
done
echo
echo "| disk | failover job ms (runs) | median | first serial output ms (runs) | median RTO |"
echo "|---|---|---|---|---|"
for size in $SIZES; do for fillkind in $FILLS; do
  key="${size}G-$fillkind"
  python3 - "$key" "${job[$key]}" "${rto[$key]}" <<'PY'
import statistics, sys
k, j, r = sys.argv[1], [int(x) for x in sys.argv[2].split()], [int(x) for x in sys.argv[3].split()]
print(f"| {k} | {' '.join(map(str, j))} | {statistics.median(j):.0f} | {' '.join(map(str, r))} | {statistics.median(r)/1000:.2f} s |")
PY
done; done
if [ -n "$hyd_s" ]; then
  echo
  echo "Hydration of the 1 GiB filled disk after failover: $hyd_s s (its runs, as the agent measures them); qemu-img convert of the source image: $conv_s s; speed ratio $(python3 -c "print(f'{$conv_s/$hyd_s:.2f}')")x"
fi
