#!/usr/bin/env bash
# RPO under load: fio random writes at a fixed rate through `lifeboat disk serve` (journaling,
# shipping sealed segments to a local region store), with `lifeboat process --follow --latest`
# cutting (journal-backed) points at the secondary and storing one every STORE_SECS beside it;
# then `lifeboat lag` reports, for every journal record, the time from its append (the guest's
# acknowledgement follows within microseconds) to its segment being stored, and to the first
# commit of the first recovery point holding it: p50 / p99 / max.
#
#   cargo build --release -p lifeboat && bench/rpo.sh
#
# Environment: RATES="20m 50m" (fio --rate), RUNTIME=60 (s), SEGMENT_SECS=0.2, EVERY_MS=200,
#              STORE_SECS=30 (process --store-secs),
#              LIFEBOAT=target/release/lifeboat, WORKDIR=bench/out
set -euo pipefail
RATES="${RATES:-20m 50m}"
RUNTIME="${RUNTIME:-60}"
SEGMENT_SECS="${SEGMENT_SECS:-0.2}"
EVERY_MS="${EVERY_MS:-200}"
STORE_SECS="${STORE_SECS:-30}"
LIFEBOAT="${LIFEBOAT:-target/release/lifeboat}"
WORKBASE="${WORKDIR:-bench/out}"
[ -x "$LIFEBOAT" ] || { echo "$LIFEBOAT missing: cargo build --release -p lifeboat" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio missing (scripts/install-deps)" >&2; exit 1; }
mkdir -p "$WORKBASE"
work="$(mktemp -d "$(cd "$WORKBASE" && pwd)/rpo.XXXXXX")"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo "| fio rate | lag to | records | p50 (ms) | p99 (ms) | max (ms) |"
echo "|---|---|---|---|---|---|"
for rate in $RATES; do
  d="$work/$rate"; mkdir -p "$d"
  truncate -s 4G "$d/vm.img"
  "$LIFEBOAT" seed --store "$d/store" --vm rpo --disk "0=$d/vm.img" >/dev/null
  "$LIFEBOAT" disk serve --image "$d/vm.img" --journal "$d/journal" --socket "$d/s" --vm rpo \
    --ship-to "$d/store" --segment-secs "$SEGMENT_SECS" --point-secs 0 2>"$d/server.log" &
  server=$!; pids+=("$server")
  "$LIFEBOAT" process --store "$d/store" --vm rpo --latest --follow --every-ms "$EVERY_MS" \
    --store-secs "$STORE_SECS" \
    2>"$d/process.log" &
  proc=$!; pids+=("$proc")
  for _ in $(seq 100); do [ -S "$d/s" ] && break; sleep 0.1; done
  fio --name=rpo --ioengine=nbd --uri="nbd+unix:///disk0?socket=$d/s" --rw=randwrite --bs=4k \
    --iodepth=8 --size=4G --rate="$rate" --time_based --runtime="$RUNTIME" >/dev/null
  kill -TERM "$server"; wait "$server" || true
  sleep 1; kill -TERM "$proc"; wait "$proc" || true
  "$LIFEBOAT" lag --store "$d/store" --vm rpo | while read -r what _ n _ p50 _ p99 _ max; do
    echo "| $rate/s | ${what#to_} | $n | $p50 | $p99 | $max |"
  done
  rm -rf "$d"
done
echo
echo "segments sealed every ${SEGMENT_SECS}s, shipped by the disk server's ticker; points cut every ${EVERY_MS} ms, one stored every ${STORE_SECS}s."
