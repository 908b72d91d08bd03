#!/usr/bin/env bash
# Write path: fio through Lifeboat's NBD export (`lifeboat disk serve`, every write journaled
# before it is acknowledged, FLUSH makes the journal durable) vs `qemu-nbd` exporting a raw
# image file in the same filesystem. Same run, servers alternated (run 1: A B, run 2: B A, ...),
# a fresh sparse image (and journal) for every measurement.
#
#   cargo build --release -p lifeboat && bench/nbd-write.sh
#
# Workloads (fio's nbd engine, libnbd, one connection, one job):
#   randwrite4k  4 KiB random writes, iodepth 32          -> IOPS, completion latency p99
#   seqwrite1m   1 MiB sequential writes, iodepth 8       -> MiB/s
#   flush4k      4 KiB random writes, iodepth 1, fsync=1  -> write+FLUSH pairs/s, FLUSH lat p50/p99
#                (fio sends an NBD FLUSH after every write)
#
# Environment:
#   RUNS=3          measurements per server and workload (medians are reported)
#   SIZE=1G         image size (sparse, fresh each measurement)
#   RUNTIME=10      seconds per fio job, after RAMP=2 seconds of ramp (time_based)
#   LIFEBOAT=target/release/lifeboat
#   SERVERS="lifeboat qemu-nbd"   (e.g. SERVERS=qemu-nbd runs one side only)
#   WORKLOADS="randwrite4k seqwrite1m flush4k"
#   OUT=bench/out/nbd-write-<date>  raw fio JSON, server logs, summary.md
#   WORKDIR=$OUT                    where a scratch directory (images, journals, socket; the same
#                                   filesystem for both servers) is made, and removed at exit
set -euo pipefail

RUNS="${RUNS:-3}"
SIZE="${SIZE:-1G}"
RUNTIME="${RUNTIME:-10}"
RAMP="${RAMP:-2}"
LIFEBOAT="${LIFEBOAT:-target/release/lifeboat}"
SERVERS="${SERVERS:-lifeboat qemu-nbd}"
WORKLOADS="${WORKLOADS:-randwrite4k seqwrite1m flush4k}"
OUT="${OUT:-bench/out/nbd-write-$(date +%Y%m%d-%H%M%S)}"
WORKBASE="${WORKDIR:-$OUT}"
QEMU_NBD_OPTS=(-f raw -t -x disk0 --cache=writeback --aio=threads)

die() { echo "nbd-write.sh: $*" >&2; exit 1; }

for tool in fio qemu-nbd python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install fio qemu-utils python3)"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd ioengine (Debian's fio >= 3.16 has it)"
for s in $SERVERS; do
    case "$s" in
        lifeboat) [ -x "$LIFEBOAT" ] || die "$LIFEBOAT not found: run cargo build --release -p lifeboat (or set LIFEBOAT)" ;;
        qemu-nbd) ;;
        *) die "unknown server $s (lifeboat, qemu-nbd)" ;;
    esac
done
for w in $WORKLOADS; do
    case "$w" in randwrite4k | seqwrite1m | flush4k) ;; *) die "unknown workload $w" ;; esac
done

mkdir -p "$OUT" "$WORKBASE"
OUT="$(cd "$OUT" && pwd)"
WORKDIR="$(mktemp -d "$(cd "$WORKBASE" && pwd)/nbd-write-work.XXXXXX")"
SOCK="$WORKDIR/nbd.sock"
IMG="$WORKDIR/disk.raw"
JOURNAL="$WORKDIR/journal"
SERVER_PID=""
WARNINGS=()

stop_server() {
    local pid="$SERVER_PID" rc=0
    [ -n "$pid" ] || return 0
    SERVER_PID=""
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 1200); do # 60 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "nbd-write.sh: server $pid did not exit within 60 s of SIGTERM; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        return 124
    fi
    wait "$pid" || rc=$?
    return "$rc"
}
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORKDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_server() { # server log
    local server="$1" log="$2"
    rm -rf "$IMG" "$JOURNAL" "$SOCK"
    sync # write back the previous measurement's dirty pages now, not during this one
    truncate -s "$SIZE" "$IMG"
    case "$server" in
        lifeboat)
            "$LIFEBOAT" disk serve --vm bench --image "$IMG" --journal "$JOURNAL" --socket "$SOCK" \
                >"$log" 2>&1 &
            ;;
        qemu-nbd)
            qemu-nbd "${QEMU_NBD_OPTS[@]}" -k "$SOCK" "$IMG" >"$log" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    local i
    for i in $(seq 1 500); do
        [ -S "$SOCK" ] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log" >&2; die "$server exited at start"; }
        sleep 0.02
    done
    die "$server did not create $SOCK within 10 s"
}

fio_job() { # workload json
    local args=(--name="$1" --ioengine=nbd --uri="nbd+unix:///disk0?socket=$SOCK"
        --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --numjobs=1
        --output-format=json --output="$2")
    case "$1" in
        randwrite4k) args+=(--rw=randwrite --bs=4k --iodepth=32) ;;
        seqwrite1m) args+=(--rw=write --bs=1M --iodepth=8) ;;
        flush4k) args+=(--rw=randwrite --bs=4k --iodepth=1 --fsync=1) ;;
        *) die "unknown workload $1" ;;
    esac
    fio "${args[@]}" >/dev/null
}

{
    echo "# nbd-write: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $(nproc) CPUs"
    echo "RUNS=$RUNS SIZE=$SIZE RUNTIME=$RUNTIME RAMP=$RAMP SERVERS=\"$SERVERS\""
    echo "fio: $(fio --version); qemu-nbd: $(qemu-nbd --version | head -1)"
    echo "lifeboat: $LIFEBOAT disk serve --socket (journal defaults: --segment-mib 64 --segment-secs 10)"
    echo "qemu-nbd: qemu-nbd ${QEMU_NBD_OPTS[*]} -k SOCK IMG"
    echo "images, journals: $(df -hT "$WORKDIR" | awk 'NR==2 {print $1" ("$2")"}')"
} | tee "$OUT/setup.txt"

for r in $(seq 1 "$RUNS"); do
    order="$SERVERS"
    if [ $((r % 2)) -eq 0 ]; then order="$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')"; fi
    for w in $WORKLOADS; do
        for s in $order; do
            json="$OUT/$s-$w-run$r.json"
            printf 'run %s/%s  %-12s %-9s ... ' "$r" "$RUNS" "$w" "$s"
            start_server "$s" "$OUT/$s-$w-run$r.log"
            fio_job "$w" "$json"
            journal_mib=0
            [ -d "$JOURNAL" ] && journal_mib=$(( $(du -sk "$JOURNAL" | cut -f1) / 1024 ))
            if ! stop_server; then
                WARNINGS+=("$s did not stop cleanly on SIGTERM after $w run $r (see $OUT/$s-$w-run$r.log)")
            fi
            python3 - "$json" "$w" "$journal_mib" "$s" <<'EOF'
import json, sys
path, w, jmib, s = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
j = json.load(open(path))["jobs"][0]
wr = j["write"]
msg = f"{wr['iops']:.0f} IOPS, {wr['bw'] / 1024:.1f} MiB/s"
if w == "flush4k":
    p = j["sync"]["lat_ns"]["percentile"]
    msg += f", FLUSH p50 {p['50.000000'] / 1000:.0f} us p99 {p['99.000000'] / 1000:.0f} us"
if s == "lifeboat":
    msg += f", journal {jmib} MiB"
print(msg)
EOF
        done
    done
done

python3 - "$OUT" "$RUNS" "$SERVERS" "$WORKLOADS" <<'EOF' | tee "$OUT/summary.md"
import json, statistics, sys, os
out, runs, servers, workloads = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()

def metrics(w, j):
    wr = j["write"]
    if w == "randwrite4k":
        return [("IOPS", wr["iops"], True),
                ("write lat p99 (us)", wr["clat_ns"]["percentile"]["99.000000"] / 1000, False)]
    if w == "seqwrite1m":
        return [("MiB/s", wr["bw"] / 1024, True)]
    p = j["sync"]["lat_ns"]["percentile"]
    return [("write+FLUSH /s", wr["iops"], True),
            ("FLUSH lat p50 (us)", p["50.000000"] / 1000, False),
            ("FLUSH lat p99 (us)", p["99.000000"] / 1000, False)]

vals = {}  # (w, metric) -> server -> [values]
better = {}
for w in workloads:
    for s in servers:
        for r in range(1, runs + 1):
            f = os.path.join(out, f"{s}-{w}-run{r}.json")
            for name, v, hi in metrics(w, json.load(open(f))["jobs"][0]):
                vals.setdefault((w, name), {}).setdefault(s, []).append(v)
                better[(w, name)] = hi

def fmt(v):
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"

print()
head = ["workload", "metric"] + [f"{s} median" for s in servers]
if len(servers) == 2:
    head.append(f"ratio {servers[0]}/{servers[1]}")
head.append("runs (" + ", ".join(servers) + ")")
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for (w, name), per in vals.items():
    row = [w, name + (" ↑" if better[(w, name)] else " ↓")]
    meds = [statistics.median(per[s]) for s in servers]
    row += [fmt(m) for m in meds]
    if len(servers) == 2:
        row.append(f"{meds[0] / meds[1]:.2f}" if meds[1] else "-")
    row.append("; ".join(" ".join(fmt(v) for v in per[s]) for s in servers))
    print("| " + " | ".join(row) + " |")
print()
print(f"↑ higher is better, ↓ lower is better. Medians of {runs} runs per server, alternated.")
print(f"Raw fio JSON: {out}")
EOF
for msg in "${WARNINGS[@]}"; do
    echo "WARNING: $msg" | tee -a "$OUT/summary.md" >&2
done
