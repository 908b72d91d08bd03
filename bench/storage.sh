#!/usr/bin/env bash
# Storage efficiency over 100+ recovery points (issue 3): bytes the region store keeps for
# POINTS stored points of one VM vs the "unique compressed data" an ideal store would keep —
# every distinct non-zero 4 KiB block of every point image, zstd level 1 (4 KiB blocks, each
# compressed alone). Goal: store / reference <= 1.1.
#
# crates/process/examples/storage.rs does one run in-process, with the real journal, shipper,
# processor and a local-directory store (fsync on): a DISK_MIB disk seeded as the first point
# (half zeroes, a quarter text-like, a quarter random, by 1 MiB region), then POINTS rounds of
# ~ROUND_MIB of guest writes (70% sequential extents of 256 KiB..1 MiB anywhere, 30% 4..64 KiB
# writes in a hot 10% of the disk; each write text-like or random; sometimes a write-zeroes),
# each journaled, sealed, shipped, cut at a crash-consistent marker and stored (materialized).
# Store bytes are the objects under chunks/, pages/, roots/ and the point records; the journal
# segments (the CDP window, not pruned here) are shown but not counted. Each run then restores
# three points chosen in advance, compares them byte for byte with the model, and runs
# `Store::verify`; it fails otherwise. One run per chunk size, the same workload (SEED) each.
#
# MODE=journal follows the product's path (issue 3): points cut journal-backed at the markers,
# stamped ROUND_SECS apart in virtual time, stored only when Processor::store_due_with (the
# store rule, StoreRule::for_policy) says so, retention applied after every round under the
# default policy; store bytes then also count the journal segments retention keeps (the
# journal-backed points are made of them). The newest point and two more late ones are
# restored too. When retention dropped points (ROUND_SECS large enough that they leave the 2 h
# keep-all window), the reference is also computed over the kept points alone ("reference,
# kept points"), by reading them back.
#
#   cargo build --release -p lifeboat-process --examples && bench/storage.sh
#
# Environment: MODE=stored|journal, ROUND_SECS=60 (journal mode),
#              CHUNKS="4096 1024 256" (chunk sizes, KiB), DISK_MIB=1024, POINTS=120, ROUND_MIB=8,
#              SEED=1, FSYNC=1, STORAGE=target/release/examples/storage,
#              OUT=bench/out/storage-<date> (per-run logs, summary.md),
#              WORKDIR=bench/out (a scratch directory is made there and removed at exit)
set -euo pipefail
CHUNKS="${CHUNKS:-4096 1024 256}"
export DISK_MIB="${DISK_MIB:-1024}" POINTS="${POINTS:-120}" ROUND_MIB="${ROUND_MIB:-8}"
export SEED="${SEED:-1}" FSYNC="${FSYNC:-1}" MODE="${MODE:-stored}" ROUND_SECS="${ROUND_SECS:-60}"
STORAGE="${STORAGE:-target/release/examples/storage}"
OUT="${OUT:-bench/out/storage-${MODE}-$(date +%Y%m%d-%H%M%S)}"
WORKBASE="${WORKDIR:-bench/out}"
[ -x "$STORAGE" ] || {
  echo "$STORAGE missing: cargo build --release -p lifeboat-process --examples" >&2
  exit 1
}
mkdir -p "$OUT" "$WORKBASE"
work="$(mktemp -d "$(cd "$WORKBASE" && pwd)/storage-work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

{
  echo "mode ${MODE}, disk ${DISK_MIB} MiB, ${POINTS} points of ~${ROUND_MIB} MiB guest writes, seed ${SEED}, fsync ${FSYNC}"
  echo
  if [ "$MODE" = journal ]; then
    echo "points ${ROUND_SECS} s apart"
    echo
    echo "| chunk | points kept (journal-backed) | stored during the run | guest written (MiB) | unique compressed, reference (MiB) | chunks+pages+roots+records (MiB) | journal segments kept (MiB) | store total (MiB) | ratio | ratio, rounds only | reference, kept points (MiB) | ratio to it | wall (s) |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  else
    echo "| chunk | points | guest written (MiB) | unique compressed, reference (MiB) | store: chunks+pages+roots+records (MiB) | ratio | ratio, rounds only | journal segments (MiB) | wall (s) |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  fi
} | tee "$OUT/summary.md"
for kib in $CHUNKS; do
  CHUNK_KIB="$kib" HEADER=0 WORKDIR="$work" "$STORAGE" 2>"$OUT/chunk-${kib}k.log" |
    tee -a "$OUT/summary.md"
done
echo
if [ "$MODE" = journal ]; then
  echo "ratio = store total (journal segments kept included) / reference (goal <= 1.1); rounds only = what the ${POINTS} rounds added to each."
else
  echo "ratio = store / reference (goal <= 1.1); rounds only = what the ${POINTS} rounds added to each."
fi
echo "Breakdowns and correctness checks: $OUT/chunk-*.log"
