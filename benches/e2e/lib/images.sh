# shellcheck shell=bash
# Image builders for the end-to-end benchmark (sourced by run.sh).
#
# Every image is made here with qemu-img / qemu-io / mkfs.ext4 / xz, never downloaded, so a run
# is reproducible on any machine with the Debian packages. Images are cached in $IMGDIR with a
# stamp naming their parameters, and rebuilt only when the parameters change (or --rebuild).
#
# Data kinds, so that the results mean something for real disks:
#   random  - incompressible (openssl AES-CTR keystream, or /dev/urandom)
#   text    - real files of this machine (a tar of /usr/share and /usr/lib): compresses like
#             ordinary disk content
#   zeros   - written as data (allocated clusters full of zero bytes), as qcow2 zero-flag
#             clusters, and as unallocated clusters
#   rootfs  - a real Debian root filesystem (debootstrap + mkfs.ext4 -d)

SLOT=$((4 * 1048576))   # mixed images are laid out in 4 MiB slots
POOL_SLOTS=32           # pools are 128 MiB: slot data repeats every 128 MiB, beyond any window

# Random and text pools that slot data is cut from.
make_pools() {
    mkdir -p "$CACHE"
    if [ ! -s "$CACHE/pool-random" ]; then
        log "making the random data pool"
        if command -v openssl >/dev/null; then
            head -c $((SLOT * POOL_SLOTS)) /dev/zero \
                | openssl enc -aes-128-ctr -nosalt -pass pass:streamdisk-bench 2>/dev/null \
                > "$CACHE/pool-random.tmp"
        fi
        if [ "$(stat -c %s "$CACHE/pool-random.tmp" 2>/dev/null || echo 0)" -ne $((SLOT * POOL_SLOTS)) ]; then
            head -c $((SLOT * POOL_SLOTS)) /dev/urandom > "$CACHE/pool-random.tmp"
        fi
        mv "$CACHE/pool-random.tmp" "$CACHE/pool-random"
    fi
    if [ ! -s "$CACHE/pool-text" ]; then
        log "making the compressible data pool (files of this machine)"
        # tar of real files, repeated if the machine has too few of them.
        : > "$CACHE/pool-text.tmp"
        while [ "$(stat -c %s "$CACHE/pool-text.tmp")" -lt $((SLOT * POOL_SLOTS)) ]; do
            tar -cf - /usr/share /usr/lib 2>/dev/null | head -c $((SLOT * POOL_SLOTS)) >> "$CACHE/pool-text.tmp"
        done
        truncate -s $((SLOT * POOL_SLOTS)) "$CACHE/pool-text.tmp"
        mv "$CACHE/pool-text.tmp" "$CACHE/pool-text"
    fi
}

# Put slot-sized data from pool $1 (random|text) number $2 at byte offset $4 of raw file $3.
put_slot() {
    dd if="$CACHE/pool-$1" of="$3" bs=$SLOT skip=$(( $2 % POOL_SLOTS )) seek=$(( $4 / SLOT )) \
        count=1 conv=notrunc status=none
}

# stamp check: image $1 is current when its stamp holds exactly $2.
is_current() {
    [ -z "$REBUILD" ] && [ -s "$1" ] && [ -f "$1.stamp" ] && [ "$(cat "$1.stamp")" = "$2" ]
}

# build_mixed OUT VSIZE: uncompressed qcow2 (64 KiB clusters) of VSIZE bytes, slots cycling
#   random, text, hole, zeros-as-data, hole, zero-flag, hole, hole
# so 3/8 of the virtual size is stored (1/8 random, 1/8 text, 1/8 zero bytes).
build_mixed() {
    local out=$1 vsize=$2 stamp="mixed v1 $2"
    is_current "$out" "$stamp" && return 0
    log "building $(basename "$out"): uncompressed qcow2, $(human "$vsize") virtual, 3/8 stored (random, text, zero bytes) plus zero-flag and unallocated clusters"
    local raw="$out.raw.tmp" cmds="$out.qemu-io.tmp" n i off
    rm -f "$raw" "$out.tmp"
    truncate -s "$vsize" "$raw"
    n=$((vsize / SLOT))
    : > "$cmds"
    for ((i = 0; i < n; i++)); do
        off=$((i * SLOT))
        case $((i % 8)) in
            0) put_slot random $((i / 8)) "$raw" $off ;;
            1) put_slot text $((i / 8)) "$raw" $off ;;
            3) echo "write -P 0 $off $SLOT" >> "$cmds" ;;
            5) echo "write -z $off $SLOT" >> "$cmds" ;;
        esac
    done
    qemu-img convert -f raw -O qcow2 "$raw" "$out.tmp"
    rm -f "$raw"
    qemu-io -f qcow2 "$out.tmp" < "$cmds" > /dev/null
    rm -f "$cmds"
    mv "$out.tmp" "$out"
    echo "$stamp" > "$out.stamp"
}

# build_l1end OUT VSIZE GROW: a mixed image of VSIZE grown by GROW with `qemu-img resize`,
# which moves the L1 table to the end of the file, after the data it maps.
build_l1end() {
    local out=$1 vsize=$2 grow=$3 stamp="l1end v1 $2 $3"
    is_current "$out" "$stamp" && return 0
    build_mixed "$out.base.tmp" "$vsize"
    rm -f "$out.base.tmp.stamp"
    mv "$out.base.tmp" "$out.tmp"
    qemu-img resize -q -f qcow2 "$out.tmp" "+$grow"
    local l1 size
    l1=$(od -An -t u8 --endian=big -j 40 -N 8 "$out.tmp" | tr -d ' ')
    size=$(stat -c %s "$out.tmp")
    log "built $(basename "$out"): L1 table at byte $l1 of a $(human "$size") file (after the data)"
    mv "$out.tmp" "$out"
    echo "$stamp" > "$out.stamp"
}

# build_sparse OUT_SPARSE OUT_DENSE SPARSE_VSIZE DATA: the same DATA bytes (16 MiB pieces,
# alternately random and text) scattered evenly over SPARSE_VSIZE, and packed into an image of
# exactly DATA bytes.
build_sparse() {
    local outs=$1 outd=$2 vsize=$3 data=$4 stamp="sparse v1 $3 $4"
    if is_current "$outs" "$stamp" && is_current "$outd" "$stamp"; then return 0; fi
    log "building $(basename "$outs") ($(human "$vsize") virtual, $(human "$data") of data scattered) and $(basename "$outd") (the same data in $(human "$data"))"
    local piece=$((16 * 1048576)) n k stride rs="$outs.raw.tmp" rd="$outd.raw.tmp" j kind
    n=$((data / piece))
    stride=$(( (vsize / n) / 1048576 * 1048576 ))
    rm -f "$rs" "$rd"
    truncate -s "$vsize" "$rs"
    truncate -s "$data" "$rd"
    for ((k = 0; k < n; k++)); do
        for ((j = 0; j < piece / SLOT; j++)); do
            if [ $((k % 2)) -eq 0 ]; then kind=random; else kind=text; fi
            put_slot $kind $((k * 4 + j)) "$rs" $((k * stride + j * SLOT))
            put_slot $kind $((k * 4 + j)) "$rd" $((k * piece + j * SLOT))
        done
    done
    qemu-img convert -f raw -O qcow2 "$rs" "$outs.tmp"
    qemu-img convert -f raw -O qcow2 "$rd" "$outd.tmp"
    rm -f "$rs" "$rd"
    mv "$outs.tmp" "$outs"; mv "$outd.tmp" "$outd"
    echo "$stamp" > "$outs.stamp"; echo "$stamp" > "$outd.stamp"
}

# Debian minbase root filesystem, cached as a tarball. Falls back to a synthetic tree of
# text and random files when debootstrap cannot reach the mirror; ROOTFS_KIND says which.
ROOTFS_KIND=""
get_rootfs_tar() {
    if [ -s "$CACHE/rootfs.tar" ]; then
        ROOTFS_KIND=$(cat "$CACHE/rootfs.kind" 2>/dev/null || echo debootstrap)
        return 0
    fi
    local d="$CACHE/rootfs.tmp"
    rm -rf "$d"
    if command -v debootstrap >/dev/null \
        && log "debootstrap --variant=minbase bookworm (a few minutes, once)" \
        && timeout 1200 debootstrap --variant=minbase bookworm "$d" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
            > "$CACHE/debootstrap.log" 2>&1; then
        ROOTFS_KIND=debootstrap
    else
        warn "debootstrap failed or is missing (see $CACHE/debootstrap.log): using a SYNTHETIC file tree instead of a real root filesystem"
        umount -R "$d/proc" "$d/sys" 2>/dev/null || true
        rm -rf "$d"; mkdir -p "$d/usr/share" "$d/usr/lib" "$d/var/lib"
        tar -cf - /usr/share/doc /usr/share/man /usr/include 2>/dev/null | tar -xf - -C "$d/usr/share" 2>/dev/null || true
        local i
        for i in $(seq 1 24); do
            head -c 4M "$CACHE/pool-random" > "$d/var/lib/blob$i"
            dd if="$CACHE/pool-text" of="$d/usr/lib/lib$i.so" bs=4M skip="$i" count=1 status=none
        done
        ROOTFS_KIND=synthetic
    fi
    # debootstrap leaves /proc mounted only on failure paths; never pack a mounted /proc.
    umount -R "$d/proc" "$d/sys" 2>/dev/null || true
    tar -C "$d" --numeric-owner --exclude='./proc/*' --exclude='./sys/*' -cf "$CACHE/rootfs.tar.tmp" .
    mv "$CACHE/rootfs.tar.tmp" "$CACHE/rootfs.tar"
    echo "$ROOTFS_KIND" > "$CACHE/rootfs.kind"
    rm -rf "$d"
}

# build_ext4 RAW FSSIZE DATA: an ext4 filesystem of FSSIZE bytes holding copies of the root
# filesystem until about DATA bytes are used (copies of real files still compress like real
# files: qcow2 compresses each cluster on its own, VMDK each grain).
build_ext4() {
    local raw=$1 fssize=$2 data=$3
    get_rootfs_tar
    local tarsz copies stage="$raw.stage.tmp" i
    tarsz=$(stat -c %s "$CACHE/rootfs.tar")
    copies=$(( data / tarsz )); [ "$copies" -ge 1 ] || copies=1
    # One copy must fit with room for ext4's metadata, even when the sizes were scaled down.
    if [ "$fssize" -lt $(( copies * tarsz * 3 / 2 + 64 * 1048576 )) ]; then
        fssize=$(( (copies * tarsz * 3 / 2 + 64 * 1048576) / 1048576 * 1048576 ))
        warn "the root filesystem image is enlarged to $(human "$fssize") to hold $copies copy of the root filesystem"
    fi
    log "building a root filesystem image: ext4 of $(human "$fssize") with $copies copies of a $ROOTFS_KIND root filesystem ($(human "$tarsz") each)"
    rm -rf "$stage"; mkdir -p "$stage"
    for ((i = 1; i <= copies; i++)); do
        mkdir "$stage/copy$i"
        tar -C "$stage/copy$i" -xf "$CACHE/rootfs.tar" 2>/dev/null || true
    done
    rm -f "$raw.tmp"
    mkfs.ext4 -q -F -E nodiscard -d "$stage" "$raw.tmp" "$((fssize / 1024))k" \
        || die "mkfs.ext4 -d failed (filesystem too small for $copies copies?)"
    rm -rf "$stage"
    mv "$raw.tmp" "$raw"
}

# build_rootfs RAW ZLIB XZ FSSIZE DATA: the ext4 image of build_ext4, then a zlib-compressed
# qcow2 of it and a raw.xz of it. The raw file stays: it is the reference for verifying the
# raw.xz import.
build_rootfs() {
    local raw=$1 zq=$2 xzf=$3 fssize=$4 data=$5
    get_rootfs_tar
    local stamp="rootfs v1 $fssize $data $ROOTFS_KIND"
    if is_current "$raw" "$stamp" && is_current "$zq" "$stamp" && is_current "$xzf" "$stamp"; then return 0; fi
    build_ext4 "$raw" "$fssize" "$data"
    log "compressing: qemu-img convert -c (zlib)"
    qemu-img convert -c -f raw -O qcow2 -o compression_type=zlib "$raw" "$zq.tmp"
    mv "$zq.tmp" "$zq"
    log "compressing: xz -6 -T0"
    xz -6 -T0 -c "$raw" > "$xzf.tmp"
    mv "$xzf.tmp" "$xzf"
    echo "$stamp" > "$raw.stamp"; echo "$stamp" > "$zq.stamp"; echo "$stamp" > "$xzf.stamp"
}

# build_vmdk_rootfs OUT FSSIZE DATA: a streamOptimized VMDK (deflate-compressed grains, as
# VMware exports and OVAs carry them) of an ext4 root filesystem image of FSSIZE bytes.
build_vmdk_rootfs() {
    local out=$1 fssize=$2 data=$3
    get_rootfs_tar
    local stamp="vmdk-rootfs v1 $fssize $data $ROOTFS_KIND"
    is_current "$out" "$stamp" && return 0
    build_ext4 "$out.raw.tmp" "$fssize" "$data"
    log "converting to a streamOptimized VMDK"
    qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$out.raw.tmp" "$out.tmp"
    rm -f "$out.raw.tmp"
    mv "$out.tmp" "$out"
    echo "$stamp" > "$out.stamp"
}

# build_converted SRC FMT OUT: SRC (qcow2) in qemu-img's FMT with its default options
# (uncompressed, dynamic: VHDX and VDI as qemu-img and Hyper-V / VirtualBox write them).
build_converted() {
    local src=$1 fmt=$2 out=$3 stamp
    stamp="converted v1 $fmt $(cat "$src.stamp" 2>/dev/null)"
    is_current "$out" "$stamp" && return 0
    log "converting $(basename "$src") to $fmt"
    qemu-img convert -f qcow2 -O "$fmt" "$src" "$out.tmp"
    mv "$out.tmp" "$out"
    echo "$stamp" > "$out.stamp"
}

# build_containerdisk_layer QCOW2 OUT: a gzip tar layer holding QCOW2 as disk/disk.qcow2
# (owner 107, as CDI's containerDisk images have it), compressed with gzip -6 (what buildah
# and podman write by default).
build_containerdisk_layer() {
    local src=$1 out=$2 stamp stage
    stage="$out.stage.tmp"
    stamp="containerdisk v1 $(cat "$src.stamp" 2>/dev/null)"
    is_current "$out" "$stamp" && return 0
    log "building a containerDisk layer of $(basename "$src") (tar, gzip -6)"
    rm -rf "$stage"; mkdir -p "$stage/disk"
    ln "$src" "$stage/disk/disk.qcow2" 2>/dev/null || cp "$src" "$stage/disk/disk.qcow2"
    tar -C "$stage" --owner=107 --group=107 --numeric-owner -cf - disk | gzip -6 > "$out.tmp"
    rm -rf "$stage"
    mv "$out.tmp" "$out"
    echo "$stamp" > "$out.stamp"
}

# Bytes of guest data an image stores (qemu-img map: allocated data extents).
# Bytes qemu-img maps as data. `%.0f`, not `%d`: Debian's mawk caps `%d` at 2^31 - 1, which
# reported every image with 2 GiB or more of data as 2147483647 bytes.
data_bytes() {
    qemu-img map -f "$2" --output=json "$1" 2>/dev/null \
        | awk -F'"length": ' '/"data": true/ { split($2, a, ","); s += a[1] } END { printf "%.0f", s }'
}

virtual_size() {
    # The top-level "virtual-size" is the least indented one (children come first in newer qemu).
    qemu-img info -f "$2" --output=json "$1" | awk -F': ' '/"virtual-size"/ {
        ind = match($0, /[^ ]/); v = $2; gsub(/[ ,]/, "", v)
        if (best == "" || ind < best) { best = ind; val = v } } END { print val }'
}
