#!/usr/bin/env bash
# Initial replication: `lifeboat seed` storing a disk image as a VM's first recovery point in a
# local-directory region store (BLAKE3 chunks, zstd, zero chunks skipped, objects fsynced) vs
# `nbdcopy` and `qemu-img convert` copying the same image to a file, same run, alternated.
#
#   cargo build --release -p lifeboat && bench/initial-replication.sh
#
# The image: SIZE_GIB (default 4) GiB, the first half zeros, the second half random (incompressible).
# Environment: RUNS=3, SIZE_GIB=4, LIFEBOAT=target/release/lifeboat, WORKDIR=bench/out.
set -euo pipefail
RUNS="${RUNS:-3}"
SIZE_GIB="${SIZE_GIB:-4}"
LIFEBOAT="${LIFEBOAT:-target/release/lifeboat}"
WORKBASE="${WORKDIR:-bench/out}"
for t in nbdcopy qemu-img python3; do command -v "$t" >/dev/null || { echo "$t missing (scripts/install-deps)" >&2; exit 1; }; done
[ -x "$LIFEBOAT" ] || { echo "$LIFEBOAT missing: cargo build --release -p lifeboat" >&2; exit 1; }
mkdir -p "$WORKBASE"
work="$(mktemp -d "$(cd "$WORKBASE" && pwd)/initial-replication.XXXXXX")"
trap 'rm -rf "$work"' EXIT
img="$work/src.img"
half=$((SIZE_GIB * 512))
truncate -s "${SIZE_GIB}G" "$img"
head -c "$((half))M" /dev/urandom | dd of="$img" bs=1M seek="$half" conv=notrunc status=none
sync
bytes=$((SIZE_GIB * 1024 * 1024 * 1024))

declare -A times
run_one() { # name, then the command
  local name=$1; shift
  rm -rf "$work/dst" "$work/dst.img"; sync
  local t0 t1
  t0=$(date +%s.%N); "$@" >/dev/null; sync; t1=$(date +%s.%N)
  times[$name]+="$(python3 -c "print(f'{$t1-$t0:.3f}')") "
}
for r in $(seq "$RUNS"); do
  order="lifeboat nbdcopy qemu-img"; [ $((r % 2)) -eq 0 ] && order="qemu-img nbdcopy lifeboat"
  for s in $order; do
    case $s in
      lifeboat) run_one lifeboat "$LIFEBOAT" seed --store "$work/dst" --vm bench --disk "0=$img" ;;
      nbdcopy) run_one nbdcopy nbdcopy "$img" "$work/dst.img" ;;
      qemu-img) run_one qemu-img qemu-img convert -f raw -O raw "$img" "$work/dst.img" ;;
    esac
    echo "run $r $s: $(echo "${times[$s]}" | awk '{print $NF}') s"
  done
done
echo
echo "| copier | wall s (runs) | median s | MiB/s of image | ratio vs lifeboat |"
echo "|---|---|---|---|---|"
lb_med=$(python3 -c "import statistics;print(statistics.median([float(x) for x in '${times[lifeboat]}'.split()]))")
for s in lifeboat nbdcopy qemu-img; do
  python3 - "$s" "${times[$s]}" "$bytes" "$lb_med" <<'PY'
import statistics, sys
name, ts, size, lb = sys.argv[1], [float(x) for x in sys.argv[2].split()], int(sys.argv[3]), float(sys.argv[4])
m = statistics.median(ts)
print(f"| {name} | {' '.join(f'{t:.2f}' for t in ts)} | {m:.2f} | {size/m/2**20:.0f} | {m/lb:.2f} |")
PY
done
echo
echo "ratio = copier's median time / lifeboat's (above 1.0: lifeboat is faster). Store: $(du -sh "$work" | cut -f1) scratch"
