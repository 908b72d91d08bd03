#!/usr/bin/env bash
# Assembles the test guest's boot sector with GNU binutils (no nasm needed).
#   guest/build.sh [OUTDIR]   ->  OUTDIR/bootsector.bin (512 bytes; default OUTDIR: guest/)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here}"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
as --32 -o "$tmp/bootsector.o" "$here/bootsector.S"
ld -m elf_i386 -Ttext 0x7c00 -e _start --oformat binary -o "$tmp/bootsector.bin" "$tmp/bootsector.o"
size=$(stat -c %s "$tmp/bootsector.bin")
if [ "$size" -ne 512 ]; then
    echo "build.sh: bootsector.bin is $size bytes, expected 512" >&2
    exit 1
fi
mv "$tmp/bootsector.bin" "$out/bootsector.bin"
echo "$out/bootsector.bin"
