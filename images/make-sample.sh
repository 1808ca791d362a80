#!/usr/bin/env bash
# Makes images/sample.qcow2: a small compressed qcow2 image whose guest content mixes the kinds of
# data an importer must get right, so the README's import command and the container test exercise
# more than one code path:
#   - pseudo-random data (incompressible: qemu stores those clusters uncompressed),
#   - plain text (compresses well: stored as zlib-compressed clusters),
#   - a repeating byte pattern written with qemu-io,
#   - zeros and unallocated ranges (no data in the file at all),
#   - data in the very last bytes, with a virtual size that is not a multiple of the cluster size.
#
# The content is deterministic (the "random" part is AES-CTR keystream from a fixed passphrase), so
# re-running the script gives the same guest bytes; the qcow2 container itself is made by
# `qemu-img convert -c`, and a newer qemu-img may lay it out differently.
#
# Usage: images/make-sample.sh [OUTPUT]   (default: images/sample.qcow2 beside this script)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/sample.qcow2}

for tool in qemu-img qemu-io openssl; do
    command -v "$tool" >/dev/null || { echo "make-sample.sh: $tool not found" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
raw=$work/sample.raw

KiB=1024
MiB=$((1024 * KiB))
# 4 MiB plus 3 sectors: an odd size, so the last cluster is partial.
size=$((4 * MiB + 3 * 512))

qemu-img create -q -f raw "$raw" "$size"

# 192 KiB of pseudo-random bytes at offset 0 (think: a boot sector and encrypted or compressed files).
# CTR mode turns exactly N zero bytes into exactly N keystream bytes (no early-closed pipe).
head -c $((192 * KiB)) /dev/zero \
    | openssl enc -aes-256-ctr -pbkdf2 -nosalt -pass pass:streamdisk-sample 2>/dev/null \
    | dd of="$raw" bs=64K conv=notrunc status=none

# 512 KiB of text at 1 MiB (think: config files, logs).
# Written to a file and cut to size there, so no producer is killed by a closed pipe.
seq -f 'line %06g: the quick brown fox jumps over the lazy dog; streamdisk sample text' 0 7000 \
    >"$work/text"
truncate -s $((512 * KiB)) "$work/text"
dd if="$work/text" of="$raw" bs=64K seek=16 conv=notrunc status=none

# A byte pattern at 2 MiB + 4 KiB, not cluster aligned, so one cluster holds both data and zeros.
qemu-io -f raw -c "write -P 0xa5 $((2 * MiB + 4 * KiB)) $((60 * KiB))" "$raw" >/dev/null

# 3 MiB .. end stays zero except for the final 1536 bytes, which carry a marker pattern.
qemu-io -f raw -c "write -P 0x5a $((size - 1536)) 1536" "$raw" >/dev/null

# Convert with compression; qemu-img leaves all-zero clusters unallocated.
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=64k "$raw" "$out"

qemu-img check -q "$out"
echo "wrote $out: $(qemu-img info --output=json "$out" | python3 -c 'import json,sys; i=json.load(sys.stdin); print(i["virtual-size"], "bytes virtual,", i["actual-size"], "bytes on disk")')"
