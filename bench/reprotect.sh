#!/usr/bin/env bash
# Re-protect after a committed failover: bytes Lifeboat sends back to the primary region vs the
# bytes that diverged, and its wall time vs rsync's delta transfer of the same two images.
#
#   cargo build --release -p lifeboat && bench/reprotect.sh
#
# Each run is a fresh `lifeboat up` (vault + agents "primary-host"/"secondary-host" for regions
# "primary"/"secondary", all under one directory) on a random loopback port:
#  1. VM `rp`, one raw disk of SIZE_GIB GiB: first half random data, second half zeros (sparse).
#     No guest: the VM is never started at the primary (the source agent serves its disk anyway).
#  2. `lifeboat protect rp --target-region secondary`, until the item is `protected` with a
#     recovery point that failover accepts; that point's id is noted.
#  3. PRIMARY_FRACTION of the 4 KiB blocks are written at the primary through the source agent's
#     NBD socket (bench/nbdwrite.py; random, incompressible data): writes made after the
#     recovery point. Then until a newer point exists (they were shipped).
#  4. `lifeboat failover rp --recovery-point <noted point> --shutdown-source`, `lifeboat commit
#     rp`, `lifeboat vm stop rp` (QEMU at the secondary off; the agent keeps serving the disk).
#  5. FRACTION of the blocks are written at the secondary (recovered disk's NBD socket).
#     Diverged bytes = |union of both block lists| x 4 KiB. With CHECK=1 (default) the two
#     images are compared block by block: they must differ in exactly those blocks.
#  6. rsync, same run: the primary's image (it holds the primary's writes) copied to dst.img,
#     the secondary's image to src.img (cp --sparse=always; or read in place, see SRC_COPY),
#     caches dropped (as root), `rsync -I --inplace --no-whole-file --stats src.img dst.img`
#     timed; its "Total bytes sent" and "Literal data" recorded; cmp checks the result.
#  7. Lifeboat: caches dropped, `lifeboat reprotect rp --yes --output json` timed. Bytes sent =
#     the sizes of VM rp's journal segments in the PRIMARY region's store after the job
#     (`regions/primary/store/vms/rp/segments/`: re-protect ships the diverged blocks as journal
#     records from the secondary into the primary region's store); everything else the primary
#     store gained is reported beside it. With VERIFY=1 (default) the primary store's latest
#     point is restored and compared with the secondary's image (skipped, with a note, if the
#     store has no restorable point).
# Goals: lifeboat bytes / diverged bytes <= 1.1; rsync wall / lifeboat >= 5. "Lifeboat resync"
# is the time rsync's work corresponds to: from the Resynchronize step's start until every
# diverged range is in the primary region (re-journaled at the secondary and its records stored
# in the primary's store), from the job's step detail. The whole re-protect adds copying the
# original disk into the primary region's own store (local to that region: its recovery points
# need a full copy there) and waiting for the first recovery point; it is shown beside it.
#
# Environment:
#   SIZE_GIB=8              the disk
#   FRACTION=0.01           share of its 4 KiB blocks written at the secondary after failover
#   PRIMARY_FRACTION=0.001  share written at the primary after the recovery point
#   RUNS=1                  runs (medians when more than one)
#   LIFEBOAT=target/release/lifeboat
#   WORKDIR=bench/out       a scratch directory is made there, removed at exit (KEEP=1 keeps it);
#                           it needs about 2.1 x SIZE_GIB GiB free, 2.6 x with src.img
#   SRC_COPY=auto           1: copy the secondary's image to src.img for rsync; 0: rsync reads it
#                           where the agent keeps it (idle: the VM is stopped); auto: copy when
#                           the disk has room for it and 1 GiB more
#   CHECK=1                 compare the two images block by block before rsync
#   VERIFY=1                restore the primary store's latest point after re-protect, compare
#   POINT_SECS=10           the item's policy "bench" cuts a crash-consistent point every
#                           POINT_SECS s, so step 3 waits seconds, not the default policy's 5 min
#                           (0: the default policy)
#   RSYNC_OPTS=""           more rsync options, e.g. "-B 4096" (rsync's default block for a file
#                           of S bytes is about sqrt(S): 32 KiB for 1 GiB, 90 KiB for 8 GiB, so
#                           every scattered 4 KiB write costs it a whole block of literal data)
#   LIFEBOAT_ACCEL=tcg      how QEMU runs the (guestless) VM at the secondary until it is stopped
set -euo pipefail
set -E
SIZE_GIB="${SIZE_GIB:-8}"
FRACTION="${FRACTION:-0.01}"
PRIMARY_FRACTION="${PRIMARY_FRACTION:-0.001}"
RUNS="${RUNS:-1}"
LB="${LIFEBOAT:-target/release/lifeboat}"
WORKBASE="${WORKDIR:-bench/out}"
CHECK="${CHECK:-1}"
VERIFY="${VERIFY:-1}"
KEEP="${KEEP:-0}"
SRC_COPY="${SRC_COPY:-auto}"
POINT_SECS="${POINT_SECS:-10}"
RSYNC_OPTS="${RSYNC_OPTS:-}"
BLOCK=4096
export LIFEBOAT_ACCEL="${LIFEBOAT_ACCEL:-tcg}"
here="$(cd "$(dirname "$0")" && pwd)"
nbdwrite="$here/nbdwrite.py"

step="setup"
say() { echo "== [run ${run:-0}] $*"; }
begin() { step="$1"; say "$1"; }
fail() {
  echo "reprotect.sh: FAILED at step '$step': $*" >&2
  if [ -n "${d:-}" ] && [ -f "$work/up.log" ]; then
    echo "--- last lines of the lifeboat up log ($work/up.log):" >&2
    tail -15 "$work/up.log" >&2
  fi
  exit 1
}
trap 'rc=$?; echo "reprotect.sh: FAILED at step '"'"'$step'"'"' (line $LINENO, exit $rc)" >&2; exit $rc' ERR

case "$SIZE_GIB" in '' | *[!0-9]* | 0) fail "SIZE_GIB must be a positive whole number of GiB (got '$SIZE_GIB')" ;; esac
case "$RUNS" in '' | *[!0-9]* | 0) fail "RUNS must be a positive number (got '$RUNS')" ;; esac
for t in python3 curl cmp cp truncate head setsid; do command -v "$t" >/dev/null || fail "$t is missing"; done
if ! command -v rsync >/dev/null; then
  begin "install rsync"
  apt-get install -y rsync >/dev/null || fail "rsync is missing and apt-get install -y rsync failed"
fi
[ -x "$LB" ] || fail "$LB missing: cargo build --release -p lifeboat (or set LIFEBOAT)"
LB="$(cd "$(dirname "$LB")" && pwd)/$(basename "$LB")"
mkdir -p "$WORKBASE"
work="$(mktemp -d "$(cd "$WORKBASE" && pwd)/reprotect.XXXXXX")"
# The image's random half, the secondary store, the recovered disk and dst.img (src.img too
# when there is room: see SRC_COPY).
need_kib=$(( SIZE_GIB * 1024 * 1024 * 21 / 10 ))
free_kib=$(df -Pk "$work" | awk 'NR==2 {print $4}')
if [ "$free_kib" -lt "$need_kib" ]; then
  rmdir "$work"
  fail "$((free_kib / 1048576)) GiB free under $WORKBASE, about $((need_kib / 1048576)) GiB needed for SIZE_GIB=$SIZE_GIB"
fi

up=""
stop_up() {
  if [ -n "$up" ]; then
    kill -TERM "$up" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$up" 2>/dev/null || break; sleep 0.1; done
    # Whatever is left of its process group (QEMU, helpers) after 30 s.
    kill -KILL -- "-$up" 2>/dev/null || true
    wait "$up" 2>/dev/null || true
    up=""
  fi
}
cleanup() { stop_up; if [ "$KEEP" = 1 ]; then echo "scratch directory kept: $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
trap 'echo "reprotect.sh: interrupted at step '"'"'$step'"'"'" >&2; exit 130' INT
trap 'echo "reprotect.sh: terminated at step '"'"'$step'"'"'" >&2; exit 143' TERM

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1000:.2f}')" "$1" "$2"; }
dropcaches() { sync; { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null || true; }
# until SECS WHAT CMD...: runs CMD every 0.2 s until it succeeds; fails the step after SECS.
until_ok() {
  local limit="$1" what="$2"; shift 2
  local end=$(( $(date +%s) + limit ))
  until "$@"; do
    [ "$(date +%s)" -lt "$end" ] || fail "$what: not within $limit s"
    kill -0 "$up" 2>/dev/null || fail "$what: lifeboat up exited"
    sleep 0.2
  done
}
item_state() { "$LB" items --output json 2>/dev/null | python3 -c '
import json, sys
for i in json.load(sys.stdin):
    if i["vm"] == "rp":
        print(i["state"])' || true; }
is_protected() { [ "$(item_state)" = protected ]; }
# The newest point failover accepts (not the initial copy), by journal position.
newest_point() { "$LB" item points rp --output json 2>/dev/null | python3 -c '
import json, sys
ps = [p for p in json.load(sys.stdin) if p.get("form") != "initial-copy"]
if ps:
    print(max(ps, key=lambda p: (p["id"].split("-")[0], p["time"]))["id"])' || true; }
has_point() { [ -n "$(newest_point)" ]; }
newer_point() { local p; p="$(newest_point)"; [ -n "$p" ] && [ "$p" != "$1" ]; }
hosts_up() { [ "$("$LB" hosts --output json 2>/dev/null | grep -c '"region"')" = 2 ]; }
socket_ready() { [ -S "$1" ]; }
# Sum of the sizes of the files under a directory (0 if it does not exist).
bytes_under() { if [ -d "$1" ]; then find "$1" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}'; else echo 0; fi; }
# run_job NAME OUTFILE CMD...: a waiting CLI job command; its JSON to OUTFILE, times it.
run_job() {
  local name="$1" out="$2"; shift 2
  local t0 t1 rc=0
  t0=$(now_ms)
  "$@" --output json >"$out" 2>"$out.err" || rc=$?
  t1=$(now_ms)
  job_s=$(secs "$t0" "$t1")
  if [ "$rc" != 0 ]; then
    echo "--- $name printed:" >&2; tail -30 "$out" >&2; cat "$out.err" >&2
    fail "$name exited with status $rc after $job_s s"
  fi
  say "$name: done in $job_s s"
}

size=$(( SIZE_GIB << 30 ))
half=$(( size / 2 ))
results="$work/results.tsv"
: >"$results"
for run in $(seq "$RUNS"); do
  d="$work/up"
  rm -rf "$d" "$work"/*.img "$work"/*.txt
  mkdir -p "$d"
  img="$work/vm.img"

  begin "make the ${SIZE_GIB} GiB image (first half random, second half sparse zeros)"
  t0=$(now_ms)
  head -c "$half" /dev/urandom >"$img" || fail "writing $half random bytes to $img"
  truncate -s "$size" "$img"
  sync
  say "image made in $(secs "$t0" "$(now_ms)") s ($(du -k "$img" | cut -f1) KiB allocated)"

  begin "start lifeboat up"
  port=$(( 20000 + RANDOM % 20000 ))
  export LIFEBOAT_VAULT="http://127.0.0.1:$port" LIFEBOAT_TOKEN_FILE="$d/vault/token"
  # Its own process group (setsid), so that cleanup can end everything it started.
  setsid "$LB" up --data "$d" --listen "127.0.0.1:$port" >"$work/up.out" 2>"$work/up.log" &
  up=$!
  until_ok 60 "both agents registered with the vault on port $port" hosts_up

  begin "create VM rp"
  cat >"$work/vm.json" <<EOF
{"name": "rp", "vcpus": 1, "memory_mib": 32,
 "disks": [{"source": {"file": {"path": "$img", "format": "raw"}}}],
 "serial_log": "$work/unused.serial"}
EOF
  "$LB" vm create rp --region primary --definition "$work/vm.json" >/dev/null || fail "lifeboat vm create rp"

  policy=default
  if [ "$POINT_SECS" != 0 ]; then
    begin "policy bench: a crash-consistent point every $POINT_SECS s"
    curl -sSf -X PUT -H "Authorization: Bearer $(cat "$LIFEBOAT_TOKEN_FILE")" \
      -H "Content-Type: application/json" \
      -d "{\"name\": \"bench\", \"crash_consistent_interval\": \"${POINT_SECS}s\"}" \
      "$LIFEBOAT_VAULT/api/policies/bench" >/dev/null || fail "PUT /api/policies/bench"
    policy=bench
  fi

  begin "protect rp (initial replication of ${SIZE_GIB} GiB, policy $policy)"
  run_job "lifeboat protect" "$work/protect.json" "$LB" protect rp --target-region secondary --policy "$policy"
  protect_s=$job_s
  until_ok 120 "item rp in state protected" is_protected
  until_ok 600 "a recovery point of rp that failover accepts" has_point
  point="$(newest_point)"
  say "protected; recovery point $point"

  begin "write PRIMARY_FRACTION=$PRIMARY_FRACTION of the blocks at the primary (after point $point)"
  psock="$d/agents/primary/vms/rp/nbd.sock"
  socket_ready "$psock" || fail "no NBD socket $psock at the primary"
  python3 "$nbdwrite" --socket "$psock" --export disk0 --size "$size" --block "$BLOCK" \
    --fraction "$PRIMARY_FRACTION" --seed $(( run * 1000 + 1 )) --list "$work/primary.txt" \
    || fail "nbdwrite.py at the primary"
  until_ok $(( POINT_SECS > 0 ? POINT_SECS * 6 + 60 : 900 )) "a recovery point newer than $point (the primary's writes shipped)" newer_point "$point"
  say "newer point: $(newest_point)"

  begin "failover rp to point $point, source shut down"
  run_job "lifeboat failover" "$work/failover.json" "$LB" failover rp --recovery-point "$point" --shutdown-source --shutdown-timeout 3
  failover_s=$job_s

  begin "commit rp (hydrate the recovered disk)"
  run_job "lifeboat commit" "$work/commit.json" "$LB" commit rp
  commit_s=$job_s

  begin "stop VM rp at the secondary"
  "$LB" vm stop rp >/dev/null || fail "lifeboat vm stop rp"

  begin "write FRACTION=$FRACTION of the blocks at the secondary"
  ssock="$d/agents/secondary/recovered/rp/nbd.sock"
  simg="$d/agents/secondary/recovered/rp/disk0.img"
  until_ok 30 "the recovered disk's NBD socket $ssock" socket_ready "$ssock"
  python3 "$nbdwrite" --socket "$ssock" --export disk0 --size "$size" --block "$BLOCK" \
    --fraction "$FRACTION" --seed $(( run * 1000 + 2 )) --list "$work/secondary.txt" \
    || fail "nbdwrite.py at the secondary"
  [ -f "$simg" ] || fail "the secondary's image $simg does not exist"
  diverged_blocks=$(sort -u "$work/primary.txt" "$work/secondary.txt" | wc -l)
  diverged=$(( diverged_blocks * BLOCK ))
  say "diverged: $diverged_blocks blocks, $diverged bytes ($(wc -l <"$work/primary.txt") written at the primary, $(wc -l <"$work/secondary.txt") at the secondary)"

  begin "rsync: copy the two images (cp --sparse=always)"
  cp --sparse=always "$img" "$work/dst.img" || fail "copying the primary's image $img"
  src="$work/src.img"
  alloc_kib=$(du -k "$simg" | cut -f1)
  free_kib=$(df -Pk "$work" | awk 'NR==2 {print $4}')
  if [ "$SRC_COPY" = 0 ] || { [ "$SRC_COPY" = auto ] && [ "$free_kib" -lt $(( alloc_kib + (1 << 20) )) ]; }; then
    src="$simg"
    say "rsync reads the secondary's image in place (SRC_COPY=$SRC_COPY; $((free_kib >> 20)) GiB free, the copy needs $((alloc_kib >> 10)) MiB + 1 GiB)"
  else
    cp --sparse=always "$simg" "$src" || fail "copying the secondary's image $simg"
  fi
  if [ "$CHECK" = 1 ]; then
    begin "check: the images differ in exactly the diverged blocks"
    python3 - "$work/dst.img" "$src" "$work/primary.txt" "$work/secondary.txt" "$BLOCK" <<'PY' || fail "the primary's and the secondary's images do not differ in exactly the written blocks"
import sys
a, b, pl, sl, block = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
want = {int(x) for f in (pl, sl) for x in open(f)}
got = set()
step = 1 << 20
with open(a, "rb") as fa, open(b, "rb") as fb:
    off = 0
    while True:
        x, y = fa.read(step), fb.read(step)
        if not x and not y:
            break
        if len(x) != len(y):
            sys.exit(f"the images differ in size (at offset {off})")
        if x != y:
            for i in range(0, len(x), block):
                if x[i:i + block] != y[i:i + block]:
                    got.add(off + i)
        off += len(x)
if got != want:
    print(f"differing blocks: {len(got)}; written: {len(want)}; written but equal: "
          f"{len(want - got)}; differing but not written: {len(got - want)} "
          f"(first: {sorted(got - want)[:5]})", file=sys.stderr)
    sys.exit(1)
print(f"== the images differ in exactly the {len(got)} written blocks")
PY
  fi

  begin "rsync -I --inplace --no-whole-file ${RSYNC_OPTS:+$RSYNC_OPTS }$(basename "$src") dst.img"
  dropcaches
  t0=$(now_ms)
  # shellcheck disable=SC2086 # RSYNC_OPTS: words
  rsync -I --inplace --no-whole-file --stats $RSYNC_OPTS "$src" "$work/dst.img" >"$work/rsync.out" 2>&1 \
    || { cat "$work/rsync.out" >&2; fail "rsync exited with an error"; }
  t1=$(now_ms)
  rsync_s=$(secs "$t0" "$t1")
  rsync_sent=$(sed -n 's/^Total bytes sent: *\([0-9,]*\).*/\1/p' "$work/rsync.out" | tr -d ,)
  rsync_literal=$(sed -n 's/^Literal data: *\([0-9,]*\).*/\1/p' "$work/rsync.out" | tr -d ,)
  [ -n "$rsync_sent" ] || { cat "$work/rsync.out" >&2; fail "no 'Total bytes sent' in rsync's --stats"; }
  cmp "$src" "$work/dst.img" >/dev/null || fail "after rsync, dst.img differs from $src"
  rm -f "$work/dst.img"
  say "rsync: $rsync_s s, total bytes sent $rsync_sent, literal data ${rsync_literal:-?}; cmp: identical"

  begin "lifeboat reprotect rp --yes"
  pstore="$d/regions/primary/store"
  store_before=$(bytes_under "$pstore")
  dropcaches
  t0=$(now_ms)
  rc=0
  "$LB" reprotect rp --yes --output json >"$work/reprotect.json" 2>"$work/reprotect.err" || rc=$?
  t1=$(now_ms)
  lb_s=$(secs "$t0" "$t1")
  if [ "$rc" != 0 ]; then
    echo "--- lifeboat reprotect printed:" >&2; tail -30 "$work/reprotect.json" >&2; cat "$work/reprotect.err" >&2
    echo "rsync figures of this run: $rsync_s s, total bytes sent $rsync_sent, literal data ${rsync_literal:-?}, diverged $diverged bytes" >&2
    fail "lifeboat reprotect exited with status $rc after $lb_s s"
  fi
  lb_sent=$(bytes_under "$pstore/vms/rp/segments")
  store_after=$(bytes_under "$pstore")
  store_other=$(( store_after - store_before - lb_sent ))
  # The job's wall time as the vault records it, and its Resynchronize step if steps carry times.
  read -r job_wall resync_s < <(python3 - "$work/reprotect.json" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception:
    print("- -"); sys.exit()
wall = "-"
if isinstance(j.get("created_at"), int) and isinstance(j.get("finished_at"), int):
    wall = f"{(j['finished_at'] - j['created_at']) / 1000:.2f}"
resync = "-"
import re
for s in j.get("steps", []):
    if s.get("name") == "Resynchronize":
        # "... shipped to region primary in 1.23 s; the original disks copied ... in 9.87 s"
        m = re.search(r"shipped to region \S+ in ([0-9.]+) s", s.get("detail") or "")
        if m:
            resync = m.group(1)
            break
        for a, b in (("started_at", "finished_at"), ("start", "end"), ("started", "finished"),
                     ("started_at", "ended_at")):
            if isinstance(s.get(a), (int, float)) and isinstance(s.get(b), (int, float)):
                resync = f"{(s[b] - s[a]) / 1000:.2f}"
                break
print(wall, resync)
PY
)
  say "lifeboat reprotect: $lb_s s (job $job_wall s, Resynchronize step $resync_s s); segments in the primary store $lb_sent bytes, other new objects there $store_other bytes"
  python3 -c "import json,sys; [print('   ', s['status'], s['name'], ('- ' + s['detail']) if s.get('detail') else '') for s in json.load(open(sys.argv[1])).get('steps', [])]" "$work/reprotect.json" 2>/dev/null || true

  verify="-"
  if [ "$VERIFY" = 1 ]; then
    begin "verify: the primary store's latest point equals the secondary's image"
    alloc_kib=$(du -k "$src" 2>/dev/null | cut -f1 || true)
    free_kib=$(df -Pk "$work" | awk 'NR==2 {print $4}')
    if [ -z "$alloc_kib" ]; then
      verify="no-image"
      say "verify skipped: the secondary's image $src is gone after re-protect"
    elif [ "$free_kib" -lt $(( alloc_kib + (1 << 20) )) ]; then
      verify="no-room"
      say "verify skipped: $((free_kib >> 20)) GiB free, the restored image needs $((alloc_kib >> 10)) MiB + 1 GiB"
    elif "$LB" restore --store "$pstore" --vm rp --point latest --output "$work/verify.img" >"$work/verify.out" 2>&1; then
      if cmp "$work/verify.img" "$src" >/dev/null; then
        verify=ok
      else
        fail "the primary store's latest point differs from the secondary's image"
      fi
    else
      verify="no-point"
      say "verify skipped: no restorable point in the primary store ($(tail -1 "$work/verify.out"))"
    fi
    rm -f "$work/verify.img"
  fi
  rm -f "$work/src.img"

  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$diverged" "$lb_sent" \
    "$store_other" "$rsync_sent" "${rsync_literal:-0}" "$lb_s" "$rsync_s" "$job_wall" "$resync_s" \
    "$protect_s" "$failover_s" "$commit_s" "$verify" "$diverged_blocks" >>"$results"
  stop_up
done

step="report"
echo
python3 - "$results" "$SIZE_GIB" "$FRACTION" "$PRIMARY_FRACTION" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
size, frac, pfrac = sys.argv[2], sys.argv[3], sys.argv[4]
def num(x):
    try:
        return float(x)
    except ValueError:
        return None
def med(i):
    v = [num(r[i]) for r in rows if num(r[i]) is not None]
    return statistics.median(v) if v else None
def fmt(x, f="{:.0f}"):
    return "-" if x is None else f.format(x)
cols = ["diverged bytes", "lifeboat bytes sent", "ratio (goal <= 1.1)", "rsync bytes sent",
        "rsync literal", "lifeboat resync s", "lifeboat whole re-protect s", "rsync wall s",
        "rsync / resync (goal >= 5)", "rsync / whole re-protect", "protect s", "failover s",
        "commit s", "verify"]
print(f"Re-protect, {size} GiB disk (half random, half zeros), {pfrac} of the 4 KiB blocks written "
      f"at the primary after the point, {frac} at the secondary after failover")
print()
print("| run | " + " | ".join(cols) + " |")
print("|---" * (len(cols) + 1) + "|")
def line(label, div, lb, rs, lit, res, lbs, rss, ps, fs, cs, ver):
    ratio = lb / div if lb is not None and div else None
    speed = rss / res if rss is not None and res else None
    whole = rss / lbs if rss is not None and lbs else None
    print(f"| {label} | {fmt(div)} | {fmt(lb)} | {fmt(ratio, '{:.3f}')} | {fmt(rs)} | {fmt(lit)} | "
          f"{fmt(res, '{:.2f}')} | {fmt(lbs, '{:.2f}')} | {fmt(rss, '{:.2f}')} | "
          f"{fmt(speed, '{:.1f}')} | {fmt(whole, '{:.2f}')} | "
          f"{fmt(ps, '{:.1f}')} | {fmt(fs, '{:.1f}')} | {fmt(cs, '{:.1f}')} | {ver} |")
for r in rows:
    line(r[0], num(r[1]), num(r[2]), num(r[4]), num(r[5]), num(r[9]), num(r[6]), num(r[7]),
         num(r[10]), num(r[11]), num(r[12]), r[13])
if len(rows) > 1:
    line("median", med(1), med(2), med(4), med(5), med(9), med(6), med(7), med(10), med(11),
         med(12), ",".join(sorted({r[13] for r in rows})))
print()
for r in rows:
    print(f"run {r[0]}: {r[14]} diverged blocks; other new objects in the primary store "
          f"{r[3]} bytes; reprotect job {r[8]} s as the vault recorded it, Resynchronize "
          f"step {r[9]} s")
PY
