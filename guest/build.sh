#!/usr/bin/env bash
# Assembles the test guests with GNU binutils (no nasm needed).
#   guest/build.sh [OUTDIR]   ->  OUTDIR/bootsector.bin (512 bytes) and OUTDIR/seqwriter.bin
#                                 (4096 bytes); default OUTDIR: guest/
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here}"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
build() { # name, expected size
  as --32 -o "$tmp/$1.o" "$here/$1.S"
  ld -m elf_i386 -Ttext 0x7c00 -e _start --oformat binary -o "$tmp/$1.bin" "$tmp/$1.o"
  size=$(stat -c %s "$tmp/$1.bin")
  if [ "$size" -ne "$2" ]; then
    echo "build.sh: $1.bin is $size bytes, expected $2" >&2
    exit 1
  fi
  mv "$tmp/$1.bin" "$out/$1.bin"
  echo "$out/$1.bin"
}
build bootsector 512
build seqwriter 4096
