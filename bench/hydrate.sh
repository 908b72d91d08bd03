#!/usr/bin/env bash
# Instant recovery: background hydration of a recovery point from a local-directory region store
# into a raw target image (lifeboat-recover; `crates/recover/examples/hydrate.rs run`: BLAKE3
# verified chunk reads, zero chunks punched, not read, periodic checkpoints with fdatasync) vs
# `qemu-img convert -f raw -O raw` of the same image to a file, same run, alternated.
#
#   cargo build --release -p lifeboat-recover --examples && bench/hydrate.sh
#
# The image: SIZE_GIB (default 4) GiB, the first half zeros, the second half random
# (incompressible), seeded once as the VM's first point (4 MiB chunks). Each timed run is the
# whole process plus `sync` (the copy durable), into a fresh target (image, state, journal).
# Both read from the page cache (the image and the store's chunks were just written).
# Environment: RUNS=3, SIZE_GIB=4, HYDRATE=target/release/examples/hydrate, WORKDIR=bench/out,
# IN_FLIGHT=4 (store reads in flight).
set -euo pipefail
RUNS="${RUNS:-3}"
SIZE_GIB="${SIZE_GIB:-4}"
HYDRATE="${HYDRATE:-target/release/examples/hydrate}"
IN_FLIGHT="${IN_FLIGHT:-4}"
WORKBASE="${WORKDIR:-bench/out}"
for t in qemu-img python3; do command -v "$t" >/dev/null || { echo "$t missing (scripts/install-deps)" >&2; exit 1; }; done
[ -x "$HYDRATE" ] || { echo "$HYDRATE missing: cargo build --release -p lifeboat-recover --examples" >&2; exit 1; }
mkdir -p "$WORKBASE"
work="$(mktemp -d "$(cd "$WORKBASE" && pwd)/hydrate.XXXXXX")"
trap 'rm -rf "$work"' EXIT
img="$work/src.img"
half=$((SIZE_GIB * 512))
truncate -s "${SIZE_GIB}G" "$img"
head -c "$((half))M" /dev/urandom | dd of="$img" bs=1M seek="$half" conv=notrunc status=none
"$HYDRATE" seed --store "$work/store" --vm bench --image "$img" >/dev/null
sync
bytes=$((SIZE_GIB * 1024 * 1024 * 1024))

declare -A times
run_one() { # name, then the command
  local name=$1; shift
  rm -rf "$work/dst.img" "$work/dst.img.recovery" "$work/journal"; sync
  local t0 t1
  t0=$(date +%s.%N); "$@" >/dev/null; sync; t1=$(date +%s.%N)
  times[$name]+="$(python3 -c "print(f'{$t1-$t0:.3f}')") "
}
for r in $(seq "$RUNS"); do
  order="hydrate qemu-img"; [ $((r % 2)) -eq 0 ] && order="qemu-img hydrate"
  for s in $order; do
    case $s in
      hydrate) run_one hydrate "$HYDRATE" run --store "$work/store" --vm bench \
                 --target "$work/dst.img" --journal "$work/journal" --in-flight "$IN_FLIGHT" ;;
      qemu-img) run_one qemu-img qemu-img convert -f raw -O raw "$img" "$work/dst.img" ;;
    esac
    echo "run $r $s: $(echo "${times[$s]}" | awk '{print $NF}') s"
  done
done
echo
echo "| copier | wall s (runs) | median s | MiB/s of image | ratio vs hydrate |"
echo "|---|---|---|---|---|"
hy_med=$(python3 -c "import statistics;print(statistics.median([float(x) for x in '${times[hydrate]}'.split()]))")
for s in hydrate qemu-img; do
  python3 - "$s" "${times[$s]}" "$bytes" "$hy_med" <<'PY'
import statistics, sys
name, ts, size, hy = sys.argv[1], [float(x) for x in sys.argv[2].split()], int(sys.argv[3]), float(sys.argv[4])
m = statistics.median(ts)
print(f"| {name} | {' '.join(f'{t:.2f}' for t in ts)} | {m:.2f} | {size/m/2**20:.0f} | {m/hy:.2f} |")
PY
done
echo
echo "ratio = copier's median time / hydrate's (above 1.0: hydration is faster). SIZE_GIB=$SIZE_GIB RUNS=$RUNS IN_FLIGHT=$IN_FLIGHT"
