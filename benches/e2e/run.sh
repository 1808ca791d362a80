#!/usr/bin/env bash
# shellcheck disable=SC2046 # $(sd ...) expands to a list of variant names, one word each
# End-to-end benchmark of streamdisk against the peers of shared/design/PEERS.md.
#
#   sudo benches/e2e/run.sh [--quick|--full] [--out DIR] [options]
#
# It builds the images, serves them with nginx on loopback, imports each into a loop device
# (O_DIRECT backing, reset with blkdiscard before every command), and runs every command in a
# memory cgroup of its own (v1 or v2), dropping the page cache first and interleaving the
# commands round-robin over several rounds. It records wall time, CPU time and peak cgroup
# memory per run plus a memory sample every ~50 ms, verifies streamdisk's output once per image
# against the source with qemu-img compare, and hands everything to the report program
# (benches/e2e/plot) which prints the summary table of medians, spreads and ratios and draws
# the figures. See BENCHMARKS.md for the method and how to read the results.
set -uo pipefail

usage() {
    cat <<'EOF'
usage: sudo benches/e2e/run.sh [--quick|--full] [--out DIR] [options]

  --quick            small images (512 MiB class, about 10 minutes); for checking the harness
  --full             the sizes of BENCHMARKS.md (default; about 1 hour on 2 cores, plus
                     15-25 minutes the first time to build the images)
  --out DIR          where results go (default: benches/e2e/results/<mode>-<UTC time>)
  --work DIR         images, loop backing files and scratch (default /var/tmp/streamdisk-bench)
  --rounds N         rounds of the interleaved commands (default 3, at least 3 for a report)
  --bin PATH         streamdisk binary to measure (default: cargo build --release, target/release/streamdisk)
  --base-bin PATH    a second streamdisk build (an older commit, say) measured in the same rounds
                     as streamdisk-base on the mixed and zlib images, default flags: a change's
                     effect on the ratios, without the drift between runs
  --peers-only       measure only the peers (for working on the harness without streamdisk)
  --groups LIST      comma-separated subset of: mixed,zlib,xz,sparse,l1end,scaling,throttled,
                     formats,registry,upload,s3 (default: all; s3 builds the s3s-fs server
                     once with cargo install)
  --publish          copy the summary, results and figures into docs/ (docs/bench for --full,
                     docs/bench-quick for --quick)
  --rebuild          rebuild the images even when cached ones match
  --no-install       do not apt-get install missing tools
  --dry-run          print the sizes and the disk space check, then stop
EOF
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MODE=full OUT="" ROUNDS=3 WORK=/var/tmp/streamdisk-bench SD_BIN="" SD_BASE_BIN="" PEERS_ONLY="" GROUPS_ARG=""
PUBLISH="" REBUILD="" NO_INSTALL="" DRY_RUN=""
ARGS_ORIG="$*"
while [ $# -gt 0 ]; do
    case $1 in
        --quick) MODE=quick ;;
        --full) MODE=full ;;
        --out) OUT=$2; shift ;;
        --work) WORK=$2; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        --bin) SD_BIN=$2; shift ;;
        --base-bin) SD_BASE_BIN=$2; shift ;;
        --peers-only) PEERS_ONLY=1 ;;
        --groups) GROUPS_ARG=$2; shift ;;
        --publish) PUBLISH=1 ;;
        --rebuild) REBUILD=1 ;;
        --no-install) NO_INSTALL=1 ;;
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; return 0; }
warn() { printf '[%s] WARNING: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; echo "$*" >> "${OUT:-/dev/null}/warnings.txt" 2>/dev/null; return 0; }
die() { printf '[%s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; exit 1; }
human() { awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", u); i = 1; while (b >= 1024 && i < 5) { b /= 1024; i++ } printf (b == int(b) ? "%d %s" : "%.1f %s"), b, u[i] }'; }

[ "$(id -u)" = 0 ] || die "run as root: the benchmark needs loop devices, memory cgroups and drop_caches"
[ "$ROUNDS" -ge 1 ] 2>/dev/null || die "--rounds needs a number"
[ "$ROUNDS" -ge 3 ] || log "note: only $ROUNDS rounds; BENCHMARKS.md figures use at least 3"

# shellcheck source=lib/cgroup.sh
. "$HERE/lib/cgroup.sh"
# shellcheck source=lib/images.sh
. "$HERE/lib/images.sh"
# shellcheck source=lib/server.sh
. "$HERE/lib/server.sh"
# shellcheck source=lib/s3.sh
. "$HERE/lib/s3.sh"

# ---------------------------------------------------------------- tools
need_tools() {
    local missing="" t
    for t in qemu-img:qemu-utils qemu-io:qemu-utils nginx:nginx-light nbdkit:nbdkit curl:curl \
             xz:xz-utils mkfs.ext4:e2fsprogs debootstrap:debootstrap losetup:mount \
             blkdiscard:util-linux /usr/bin/time:time ss:iproute2 openssl:openssl \
             docker-registry:docker-registry python3:python3 gzip:gzip; do
        command -v "${t%%:*}" >/dev/null || missing="$missing ${t#*:}"
    done
    [ -e /usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-curl-plugin.so ] \
        || ls /usr/lib/*/nbdkit/plugins/nbdkit-curl-plugin.so >/dev/null 2>&1 || missing="$missing nbdkit"
    [ -z "$missing" ] && return 0
    if [ -n "$NO_INSTALL" ]; then die "missing packages:$missing (run without --no-install to apt-get them)"; fi
    log "installing:$missing"
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing > "$WORK/apt.log" 2>&1 \
        || { apt-get update -q >> "$WORK/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >> "$WORK/apt.log" 2>&1; } \
        || die "apt-get install$missing failed; see $WORK/apt.log"
}

# ---------------------------------------------------------------- sizes
want_group() { [ -z "$GROUPS_ARG" ] || [[ ",$GROUPS_ARG," == *",$1,"* ]]; }
G=$((1024 * 1024 * 1024)) M=$((1024 * 1024))
if [ "$MODE" = quick ]; then
    MIXED=$((512 * M)); SCALE="$((64 * M)) $((256 * M)) $((1 * G))"
    ROOTFS_FS=$((768 * M)); ROOTFS_DATA=$((200 * M))
    SPARSE_V=$((1024 * G)); SPARSE_DATA=$((256 * M))
    L1_BASE=$((256 * M)); L1_GROW=$((768 * M))
    THROTTLE_V=$((48 * M)); THROTTLE_RATE=1m; TIMEOUT=600
    MID=$((512 * M))
else
    MIXED=$((8 * G)); SCALE="$((1 * G)) $((4 * G)) $((16 * G))"
    ROOTFS_FS=$((3 * G)); ROOTFS_DATA=$((1 * G))
    SPARSE_V=$((1024 * G)); SPARSE_DATA=$((1 * G))
    L1_BASE=$((1 * G)); L1_GROW=$((7 * G))
    THROTTLE_V=$((80 * M)); THROTTLE_RATE=512k; TIMEOUT=1800
    MID=$((4 * G))
fi
DISK_RESERVE_BYTES=$((5 * G))
SCALE_NOTE=""

# Disk the run needs: the images (3/8 of a mixed image is stored), the raw filesystem and its
# compressed forms, plus at the same time one CDI scratch copy and one device's worth of data
# (every device is emptied with blkdiscard after each command).
disk_need() {
    local s max=0 sum=0 sizes=""
    want_group scaling && sizes="$SCALE"
    want_group mixed && sizes="$sizes $MIXED"
    # s3 serves a hard link to the same 4 GiB mixed image.
    { want_group formats || want_group registry || want_group upload || want_group s3; } && sizes="$sizes $MID"
    for s in $sizes; do sum=$((sum + s * 3 / 8)); [ $((s * 3 / 8)) -gt $max ] && max=$((s * 3 / 8)); done
    want_group l1end && sum=$((sum + L1_BASE * 3 / 8))
    want_group sparse && sum=$((sum + 2 * SPARSE_DATA))
    { want_group zlib || want_group xz; } && sum=$((sum + ROOTFS_DATA * 2))
    # formats, registry, upload: the VHDX, VDI and gzip layer forms of the 4 GiB mixed image,
    # the registry's copy of the layer, a VMDK of a filesystem and that filesystem while it
    # is built.
    { want_group formats || want_group registry || want_group upload; } && sum=$((sum + MID * 3 / 8 * 4 + MID))
    echo $((sum + 2 * max + 2 * G))
}
scale_down() {
    MIXED=$((MIXED / 2)); ROOTFS_FS=$((ROOTFS_FS / 2)); ROOTFS_DATA=$((ROOTFS_DATA / 2))
    SPARSE_DATA=$((SPARSE_DATA / 2)); L1_BASE=$((L1_BASE / 2)); L1_GROW=$((L1_GROW / 2)); MID=$((MID / 2))
    local s n=""; for s in $SCALE; do n="$n $((s / 2))"; done; SCALE=${n# }
}

# ---------------------------------------------------------------- setup
mkdir -p "$WORK" || die "cannot create $WORK"
CACHE="$WORK/cache"; IMGDIR="$WORK/images-$MODE"; DEVDIR="$WORK/dev"; SCRATCH="$WORK/scratch"
mkdir -p "$CACHE" "$IMGDIR" "$DEVDIR" "$SCRATCH"
[ -n "$OUT" ] || OUT="$HERE/results/$MODE-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT/samples" "$OUT/logs" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/warnings.txt"
RUNTMP=$(mktemp -d /tmp/streamdisk-bench.XXXXXX)
LOOPS=()
cleanup() {
    nginx_stop
    registry_stop
    s3_stop
    [ -n "${CLIENT_CG:-}" ] && rmdir "$CLIENT_CG" 2>/dev/null
    [ -n "${UPLOAD_SRC:-}" ] && rm -f "$UPLOAD_SRC"
    local l
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
    rm -f "$DEVDIR"/*.img "$SCRATCH/tmpimage"; rm -rf "$SCRATCH/reg"
    rm -rf "$RUNTMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need_tools

# Free space: what is already in $IMGDIR will be reused or replaced, so it counts as available.
avail=$(( $(df --output=avail -B1 "$WORK" | tail -n1) + $(du -sb "$IMGDIR" | cut -f1) ))
need=$(disk_need)
log "disk: $(human "$avail") available under $WORK (counting cached images), this run needs about $(human "$need") plus a $(human "$DISK_RESERVE_BYTES") reserve"
halvings=0
while [ $((need + DISK_RESERVE_BYTES)) -gt "$avail" ] && [ $halvings -lt 4 ]; do
    scale_down; halvings=$((halvings + 1)); need=$(disk_need)
done
if [ $halvings -gt 0 ]; then
    SCALE_NOTE="sizes scaled down by 1/$((1 << halvings)) for lack of disk space ($(human "$avail") free)"
    warn "NOT ENOUGH DISK SPACE for the $MODE sizes: $SCALE_NOTE; needs about $(human "$need") now"
    IMGDIR="$WORK/images-$MODE-s$halvings"; mkdir -p "$IMGDIR"
fi
[ $((need + DISK_RESERVE_BYTES)) -le "$avail" ] || die "not enough disk space under $WORK even at 1/16 of the sizes"
if [ -n "$DRY_RUN" ]; then
    sizes=""; for s in $SCALE; do sizes="$sizes $(human "$s"),"; done
    log "$MODE sizes: mixed $(human "$MIXED"); scaling${sizes%,}; rootfs filesystem $(human "$ROOTFS_FS") with about $(human "$ROOTFS_DATA") of files; sparse $(human "$SPARSE_V") with $(human "$SPARSE_DATA") of data; L1-at-end $(human "$L1_BASE") + $(human "$L1_GROW"); throttled $(human "$THROTTLE_V") at $THROTTLE_RATE per request; $ROUNDS rounds"
    rmdir "$OUT/samples" "$OUT/logs" 2>/dev/null; rm -f "$OUT/warnings.txt"; rmdir "$OUT" 2>/dev/null
    exit 0
fi

cg_init
log "$(cg_describe)"


# ---------------------------------------------------------------- binaries
SD_VERSION=""
if [ -z "$PEERS_ONLY" ]; then
    if [ -z "$SD_BIN" ]; then
        log "cargo build --release (streamdisk)"
        (cd "$REPO" && cargo build --release --quiet) > "$OUT/logs/cargo-build.log" 2>&1 \
            || die "cargo build --release failed; see $OUT/logs/cargo-build.log"
        SD_BIN="$REPO/target/release/streamdisk"
    fi
    [ -x "$SD_BIN" ] || die "no streamdisk binary at $SD_BIN"
    SD_BIN=$(cd "$(dirname "$SD_BIN")" && pwd)/$(basename "$SD_BIN")
    SD_VERSION=$("$SD_BIN" --version 2>/dev/null | head -n1)
    if [ -n "$SD_BASE_BIN" ]; then
        [ -x "$SD_BASE_BIN" ] || die "no streamdisk binary at $SD_BASE_BIN (--base-bin)"
        SD_BASE_BIN=$(cd "$(dirname "$SD_BASE_BIN")" && pwd)/$(basename "$SD_BASE_BIN")
    fi
fi
log "building the report program (benches/e2e/plot)"
REPORT_BIN=""
if (cd "$HERE/plot" && cargo build --release --quiet) > "$OUT/logs/cargo-build-plot.log" 2>&1; then
    REPORT_BIN="$HERE/plot/target/release/e2e-report"
else
    warn "the report program did not build (see $OUT/logs/cargo-build-plot.log): raw results only"
fi

# ---------------------------------------------------------------- images
make_pools

# name -> "file format vsize" ; the reference a verification compares with
declare -A IMG_FILE IMG_FMT IMG_REF IMG_REF_FMT IMG_NOTE
add_image() { # name file format [ref ref_fmt] [note]
    IMG_FILE[$1]=$2; IMG_FMT[$1]=$3; IMG_REF[$1]=${4:-$2}; IMG_REF_FMT[$1]=${5:-$3}; IMG_NOTE[$1]=${6:-}
}
gib_name() { awk -v b="$1" 'BEGIN { if (b >= 1073741824) printf "%gg", b / 1073741824; else printf "%gm", b / 1048576 }'; }

if want_group mixed; then
    build_mixed "$IMGDIR/mixed.qcow2" "$MIXED"; add_image mixed "$IMGDIR/mixed.qcow2" qcow2
fi
if want_group zlib || want_group xz; then
    build_rootfs "$IMGDIR/rootfs.raw" "$IMGDIR/rootfs-zlib.qcow2" "$IMGDIR/rootfs.raw.xz" "$ROOTFS_FS" "$ROOTFS_DATA"
    [ "$ROOTFS_KIND" = synthetic ] && warn "the zlib and xz images hold a SYNTHETIC file tree, not a real root filesystem (debootstrap failed)"
    add_image rootfs-zlib "$IMGDIR/rootfs-zlib.qcow2" qcow2 "" "" "$ROOTFS_KIND"
    add_image rootfs-xz "$IMGDIR/rootfs.raw.xz" raw "$IMGDIR/rootfs.raw" raw "$ROOTFS_KIND"
fi
if want_group sparse; then
    build_sparse "$IMGDIR/sparse-1t.qcow2" "$IMGDIR/dense.qcow2" "$SPARSE_V" "$SPARSE_DATA"
    add_image sparse-1t "$IMGDIR/sparse-1t.qcow2" qcow2; add_image dense "$IMGDIR/dense.qcow2" qcow2
fi
if want_group l1end; then
    build_l1end "$IMGDIR/l1end.qcow2" "$L1_BASE" "$L1_GROW"; add_image l1end "$IMGDIR/l1end.qcow2" qcow2
fi
SCALE_NAMES=""
if want_group scaling; then
    for s in $SCALE; do
        n="scale-$(gib_name "$s")"
        build_mixed "$IMGDIR/$n.qcow2" "$s"; add_image "$n" "$IMGDIR/$n.qcow2" qcow2
        SCALE_NAMES="$SCALE_NAMES $n"
    done
fi
# Issues 14, 15, 17 and 18: the other formats, the registry, the upload server and S3, on a
# 4 GiB mixed image (1.5 GB stored) and a streamOptimized VMDK of a real filesystem.
if want_group formats || want_group registry || want_group upload || want_group s3; then
    build_mixed "$IMGDIR/mixed4.qcow2" "$MID"
fi
if want_group formats; then
    build_vmdk_rootfs "$IMGDIR/rootfs.vmdk" "$MID" $((MID / 3))
    [ "$ROOTFS_KIND" = synthetic ] && warn "the VMDK holds a SYNTHETIC file tree, not a real root filesystem (debootstrap failed)"
    add_image fmt-vmdk "$IMGDIR/rootfs.vmdk" vmdk "" "" "streamOptimized, $ROOTFS_KIND"
    build_converted "$IMGDIR/mixed4.qcow2" vhdx "$IMGDIR/mixed4.vhdx"
    add_image fmt-vhdx "$IMGDIR/mixed4.vhdx" vhdx
    build_converted "$IMGDIR/mixed4.qcow2" vdi "$IMGDIR/mixed4.vdi"
    add_image fmt-vdi "$IMGDIR/mixed4.vdi" vdi
fi
if want_group registry; then
    build_containerdisk_layer "$IMGDIR/mixed4.qcow2" "$IMGDIR/mixed4-layer.tar.gz"
    add_image reg-mixed "$IMGDIR/mixed4.qcow2" qcow2 "" "" "containerDisk, one gzip layer, from docker-registry"
fi
if want_group upload; then
    add_image up-mixed "$IMGDIR/mixed4.qcow2" qcow2 "" "" "uploaded with curl -T over TLS"
fi
if want_group s3; then
    add_image s3-mixed "$IMGDIR/mixed4.qcow2" qcow2 "" "" "also served by s3s-fs (SigV4, 1 MiB reads, stored ETag) as s3://$S3_BUCKET/mixed4.qcow2"
fi
# The throttled comparison (issue 5) has a small image of its own, served slowly: nginx's
# limit_rate is per request and lets each request send one second's worth at once, so each
# 4 MiB range segment must take several seconds for that burst not to flatter N connections.
if want_group throttled; then
    build_mixed "$IMGDIR/throttle.qcow2" "$THROTTLE_V"
    add_image throttled "$IMGDIR/throttle.qcow2" qcow2 "" "" "served from /slow/ at $THROTTLE_RATE per request"
fi

# ---------------------------------------------------------------- plan
# One line per measured command: group image location variant
PLAN=()
plan() { local g=$1 i=$2 loc=$3; shift 3; local v; for v in "$@"; do PLAN+=("$g $i $loc $v"); done; }
sd() { [ -z "$PEERS_ONLY" ] && echo "$@"; }
# The --base-bin build, beside streamdisk on the images where the ratios are tracked.
base() { [ -z "$PEERS_ONLY" ] && [ -n "$SD_BASE_BIN" ] && echo streamdisk-base; }
want_group mixed && plan mixed mixed img $(sd streamdisk streamdisk@64 streamdisk@32 streamdisk-c1 streamdisk-local) $(base) cdi-http cdi-none nbdkit qemu-local dd http-floor
want_group zlib && plan zlib rootfs-zlib img $(sd streamdisk streamdisk@32) $(base) cdi-http nbdkit qemu-local
want_group xz && plan xz rootfs-xz img $(sd streamdisk) xz-pipe
if want_group sparse && [ -z "$PEERS_ONLY" ]; then plan sparse sparse-1t img streamdisk; plan sparse dense img streamdisk; fi
want_group sparse && plan sparse dense img qemu-local
want_group l1end && plan l1end l1end img $(sd streamdisk) qemu-local cdi-http
if want_group scaling; then
    for n in $SCALE_NAMES; do plan scaling "$n" img $(sd streamdisk) qemu-local cdi-http dd; done
fi
want_group throttled && plan throttled throttled slow $(sd streamdisk streamdisk-c4) cdi-http
if want_group formats; then
    plan formats fmt-vmdk img $(sd streamdisk) qemu-local
    # Uncompressed VHDX and VDI store every zero block qemu-img was given as data, so more bytes
    # cross the network than for the qcow2: the network floor and four connections say how much
    # of the time is nginx's.
    for n in fmt-vhdx fmt-vdi; do plan formats "$n" img $(sd streamdisk streamdisk-c4) qemu-local qemu-local-loaded http-floor; done
fi
want_group registry && plan registry reg-mixed reg $(sd streamdisk) cdi-registry gunzip-floor
want_group upload && plan upload up-mixed upload $(sd streamdisk) cdi-upload
# streamdisk from nginx and from S3, the two servers' own floors, and CDI's S3 path.
want_group s3 && plan s3 s3-mixed img $(sd streamdisk streamdisk-s3 streamdisk-s3-c1) s3-floor http-floor cdi-s3

# variant -> limit in MiB (0: none) and the shell command (env: SD URL IMG DEV SCRATCH, and for
# the registry and upload locations BLOB_URL, UPORT, UCERT, UKEY, CLIENT_CG, UPSTANDIN).
# The upload client (curl -T) runs in a cgroup of its own, CLIENT_CG: it stands for the user's
# machine, so neither its page cache nor its TLS work is charged to the server measured. It
# sends a copy of the image in /dev/shm (UPLOAD_SRC): read cold from the disk the target's
# backing file is on, the client's reads competed with the server's writes and made the
# server's time bimodal (1.9 s or 2.5-2.8 s), a cost a client on another machine does not put
# on the server.
# The commands are single-quoted on purpose: they expand in the measured shell, not here.
variant_limit() {
    case $1 in
        streamdisk|streamdisk-c1|streamdisk-c4|streamdisk-local|streamdisk-s3|streamdisk-s3-c1|streamdisk-base) echo 0 ;;
        streamdisk@*) echo "${1#streamdisk@}" ;;
        *) echo 600 ;;   # the peers get CDI's default pod limit
    esac
}
# shellcheck disable=SC2016
variant_cmd() { # variant location
    local client='(echo "$BASHPID" > "$CLIENT_CG/cgroup.procs"; exec curl -sfk -o /dev/null -T "$UPLOAD_SRC" "$URL")'
    local wait_port='for i in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$UPORT") 2>/dev/null && break; sleep 0.05; done'
    case $1/${2:-img} in
        streamdisk/reg) echo 'exec "$SD" convert --insecure "$URL" "$DEV"'; return ;;
        streamdisk/upload)
            echo '"$SD" upload-server --listen "127.0.0.1:$UPORT" --cert "$UCERT" --key "$UKEY" "$DEV" & srv=$!; '"$wait_port"'; '"$client"' || { kill $srv; wait $srv; exit 1; }; wait $srv'
            return ;;
        cdi-upload/*)
            echo 'python3 "$UPSTANDIN" "$UPORT" "$UCERT" "$UKEY" "$SCRATCH/tmpimage" & srv=$!; '"$wait_port"'; '"$client"' || { kill $srv; wait $srv; exit 1; }; wait $srv && qemu-img convert -t writeback -p -O raw "$SCRATCH/tmpimage" "$DEV" && sync'
            return ;;
    esac
    case $1 in
        streamdisk|streamdisk@*) echo 'exec "$SD" convert "$URL" "$DEV"' ;;
        streamdisk-c1) echo 'exec "$SD" convert --connections 1 "$URL" "$DEV"' ;;
        streamdisk-c4) echo 'exec "$SD" convert --connections 4 "$URL" "$DEV"' ;;
        streamdisk-local) echo 'exec "$SD" convert "$IMG" "$DEV"' ;;
        streamdisk-base) echo 'exec "$SD_BASE" convert "$URL" "$DEV"' ;;
        cdi-http) echo 'curl -sfo "$SCRATCH/tmpimage" "$URL" && qemu-img convert -t writeback -p -O raw "$SCRATCH/tmpimage" "$DEV" && sync' ;;
        cdi-none) echo 'curl -sfo "$SCRATCH/tmpimage" "$URL" && qemu-img convert -t none -p -O raw "$SCRATCH/tmpimage" "$DEV" && sync' ;;
        nbdkit) echo 'exec nbdkit -U - --readonly --filter=readahead --filter=retry curl url="$URL" --run '"'"'qemu-img convert -t writeback -O raw "$uri" "$DEV"'"'" ;;
        qemu-local) echo 'exec qemu-img convert -t none -T none -W -O raw "$IMG" "$DEV"' ;;
        # The same conversion while the file downloads beside it, in halves over two
        # connections as streamdisk fetches it: what qemu-img takes under the load an HTTP
        # import puts on this machine, where nginx reads the same disk and shares the cores.
        qemu-local-loaded) echo 'h=$((IMG_LEN / 2)); curl -sf -o /dev/null -r "0-$((h - 1))" "$URL" & a=$!; curl -sf -o /dev/null -r "$h-" "$URL" & b=$!; qemu-img convert -t none -T none -W -O raw "$IMG" "$DEV"; r=$?; wait $a || r=1; wait $b || r=1; exit $r' ;;
        dd) echo 'exec dd if="$IMG" of="$DEV" bs=4M iflag=direct oflag=direct' ;;
        http-floor) echo 'exec curl -sf -o /dev/null "$URL"' ;;
        # S3: the object is the image's file name in bucket $S3_BUCKET of s3s-fs; curl signs
        # with SigV4 (an unsigned payload hash, as a GET has no body).
        streamdisk-s3) echo 'AWS_ACCESS_KEY_ID=$S3_KEY_ID AWS_SECRET_ACCESS_KEY=$S3_SECRET exec "$SD" convert --s3-endpoint "$S3_ENDPOINT" "s3://$S3_BUCKET/${IMG##*/}" "$DEV"' ;;
        streamdisk-s3-c1) echo 'AWS_ACCESS_KEY_ID=$S3_KEY_ID AWS_SECRET_ACCESS_KEY=$S3_SECRET exec "$SD" convert --connections 1 --s3-endpoint "$S3_ENDPOINT" "s3://$S3_BUCKET/${IMG##*/}" "$DEV"' ;;
        s3-floor) echo 'exec curl -sf --aws-sigv4 aws:amz:us-east-1:s3 -u "$S3_KEY_ID:$S3_SECRET" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o /dev/null "$S3_ENDPOINT/$S3_BUCKET/${IMG##*/}"' ;;
        cdi-s3) echo 'curl -sf --aws-sigv4 aws:amz:us-east-1:s3 -u "$S3_KEY_ID:$S3_SECRET" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o "$SCRATCH/tmpimage" "$S3_ENDPOINT/$S3_BUCKET/${IMG##*/}" && qemu-img convert -t writeback -p -O raw "$SCRATCH/tmpimage" "$DEV" && sync' ;;
        xz-pipe) echo 'set -o pipefail; curl -sf "$URL" | xz -dc | dd of="$DEV" bs=4M iflag=fullblock oflag=direct' ;;
        # containers/image's path in CDI: the layer through gunzip and tar onto scratch, then
        # qemu-img through the page cache, then sync.
        cdi-registry) echo 'set -o pipefail; mkdir -p "$SCRATCH/reg" && curl -sf "$BLOB_URL" | gzip -dc | tar -x -C "$SCRATCH/reg" && qemu-img convert -t writeback -p -O raw "$SCRATCH/reg/disk/disk.qcow2" "$DEV" && sync' ;;
        # What decompressing the layer costs on its own: one gzip stream is one thread.
        gunzip-floor) echo 'set -o pipefail; curl -sf "$BLOB_URL" | gzip -dc > /dev/null' ;;
        *) die "unknown variant $1" ;;
    esac
}

# ---------------------------------------------------------------- devices and server
declare -A IMG_DEV IMG_VSIZE IMG_DATA IMG_FBYTES IMG_VERIFY
for name in "${!IMG_FILE[@]}"; do
    f=${IMG_FILE[$name]}
    IMG_VSIZE[$name]=$(virtual_size "${IMG_REF[$name]}" "${IMG_REF_FMT[$name]}")
    IMG_FBYTES[$name]=$(stat -c %s "$f")
    IMG_DATA[$name]=$(data_bytes "${IMG_REF[$name]}" "${IMG_REF_FMT[$name]}")
    # The device holds the virtual size, or the file itself for the dd copy limit.
    size=${IMG_VSIZE[$name]}; [ "${IMG_FBYTES[$name]}" -gt "$size" ] && size=${IMG_FBYTES[$name]}
    size=$(( (size + M - 1) / M * M ))
    rm -f "$DEVDIR/$name.img"; truncate -s "$size" "$DEVDIR/$name.img"
    dev=$(losetup -f --show --direct-io=on "$DEVDIR/$name.img") || die "losetup failed for $DEVDIR/$name.img"
    LOOPS+=("$dev"); IMG_DEV[$name]=$dev; IMG_VERIFY[$name]="not run"
done
mkdir -p "$RUNTMP/docroot"
for name in "${!IMG_FILE[@]}"; do ln -sf "${IMG_FILE[$name]}" "$RUNTMP/docroot/$(basename "${IMG_FILE[$name]}")"; done
rate=$THROTTLE_RATE
nginx_start "$RUNTMP/docroot" "$rate"
url_of() {
    case $2 in
        reg) echo "docker://127.0.0.1:$RPORT/bench/mixed4:latest" ;;
        upload) echo "https://127.0.0.1:$UPORT/v1beta1/upload" ;;
        *) echo "http://127.0.0.1:$PORT/$2/$(basename "${IMG_FILE[$1]}")" ;;
    esac
}
export UPORT="" BLOB_URL="" UCERT="$RUNTMP/upload.crt" UKEY="$RUNTMP/upload.key" CLIENT_CG="" \
    UPSTANDIN="$HERE/lib/upload_standin.py"
if want_group registry; then
    registry_start
    registry_push_containerdisk bench/mixed4:latest "$IMGDIR/mixed4-layer.tar.gz"
    BLOB_URL="http://127.0.0.1:$RPORT/v2/bench/mixed4/blobs/$REGISTRY_LAYER_DIGEST"
fi
export UPLOAD_SRC=""
if want_group upload; then
    upload_certs "$RUNTMP"
    CLIENT_CG=$(cg_fixture client 1024)
    UPLOAD_SRC=/dev/shm/streamdisk-bench-upload-$$.qcow2
    cp "${IMG_FILE[up-mixed]}" "$UPLOAD_SRC" || die "cannot copy the upload image to /dev/shm"
fi
if want_group s3; then
    # The bucket is a directory of s3s-fs's root; the object a hard link to the image, with
    # the ETag record a PutObject would have stored (lib/s3.sh says why).
    mkdir -p "$WORK/s3root/$S3_BUCKET"
    ln -f "${IMG_FILE[s3-mixed]}" "$WORK/s3root/$S3_BUCKET/" 2>/dev/null \
        || cp -f "${IMG_FILE[s3-mixed]}" "$WORK/s3root/$S3_BUCKET/"
    s3_store_etag "$WORK/s3root" "$S3_BUCKET" "${IMG_FILE[s3-mixed]}"
    export S3_KEY_ID S3_SECRET
    s3_start "$WORK/s3root"
    s3_check_etag "${IMG_FILE[s3-mixed]##*/}"
fi

reset_dev() { blkdiscard -f "$1" 2>/dev/null || blkdiscard "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------- verification
# Once per image: stale non-zero stripes on the device first (so skipped zeroing would show),
# then streamdisk, then qemu-img compare of the device range [0, virtual size) with the source
# image, byte for byte. The 1 TiB image is compared through the loop device's backing file,
# whose holes qemu-img skips, instead of reading 1 TiB through the device.
verify_one() { # image variant url location
    local name=$1 v=$2 url=$3 loc=$4 dev=${IMG_DEV[$1]} vs=${IMG_VSIZE[$1]} k off n=16 src lg
    lg="$OUT/logs/verify-$name-$v.log"
    head -c $((4 * M)) /dev/zero | tr '\0' 'Z' > "$RUNTMP/stripe"
    reset_dev "$dev"
    for ((k = 0; k < n; k++)); do
        off=$(( vs * k / n / (4 * M) ))
        dd if="$RUNTMP/stripe" of="$dev" bs=4M seek="$off" oflag=direct conv=notrunc status=none 2>/dev/null
    done
    dd if="$RUNTMP/stripe" of="$dev" bs=4M seek=$(( (vs - 4 * M) / (4 * M) )) oflag=direct status=none 2>/dev/null
    local cmd; cmd=$(variant_cmd "$v" "$loc")
    if ! SD="$SD_BIN" SD_BASE="$SD_BASE_BIN" URL="$url" IMG="${IMG_FILE[$name]}" DEV="$dev" SCRATCH="$SCRATCH" \
        timeout "$TIMEOUT" bash -c "$cmd" > "$lg" 2>&1; then
        IMG_VERIFY[$name]="FAILED: $v exited non-zero ($(tail -n1 "$lg" | cut -c1-160))"
    else
        if [ "$name" = sparse-1t ]; then
            blockdev --flushbufs "$dev" 2>/dev/null
            src="json:{\"driver\":\"raw\",\"size\":$vs,\"file\":{\"driver\":\"file\",\"filename\":\"$DEVDIR/$name.img\"}}"
        else
            src="json:{\"driver\":\"raw\",\"size\":$vs,\"file\":{\"driver\":\"host_device\",\"filename\":\"$dev\"}}"
        fi
        if qemu-img compare -F "${IMG_REF_FMT[$name]}" "$src" "${IMG_REF[$name]}" >> "$lg" 2>&1; then
            IMG_VERIFY[$name]="identical"
        else
            IMG_VERIFY[$name]="FAILED: $v output differs from the source ($(tail -n1 "$lg" | cut -c1-160))"
        fi
    fi
    log "verify $name ($v): ${IMG_VERIFY[$name]}"
    [ "$v" = streamdisk ] || IMG_VERIFY[$name]="${IMG_VERIFY[$name]} ($v)"
    reset_dev "$dev"
}
if [ -z "$PEERS_ONLY" ]; then
    declare -A VERIFIED_VARIANT
    for line in "${PLAN[@]}"; do
        read -r g name loc v <<< "$line"
        case $v in streamdisk|streamdisk-c1|streamdisk-c4|streamdisk-s3|streamdisk-s3-c1|streamdisk-base) ;; *) continue ;; esac
        [ -n "${VERIFIED_VARIANT[$name/$v]:-}" ] && continue
        VERIFIED_VARIANT[$name/$v]=1
        prev=${IMG_VERIFY[$name]}
        UPORT=$(free_port)
        verify_one "$name" "$v" "$(url_of "$name" "$loc")" "$loc"
        # keep a failure visible when a later variant of the same image passes
        case $prev in FAILED*) IMG_VERIFY[$name]="$prev; ${IMG_VERIFY[$name]}" ;; esac
    done
fi

{
    echo "image,file,format,virtual_bytes,file_bytes,data_bytes,device,verify,note"
    for name in "${!IMG_FILE[@]}"; do
        printf '%s,%s,%s,%s,%s,%s,%s,"%s","%s"\n' "$name" "$(basename "${IMG_FILE[$name]}")" \
            "${IMG_FMT[$name]}" "${IMG_VSIZE[$name]}" "${IMG_FBYTES[$name]}" "${IMG_DATA[$name]}" \
            "${IMG_DEV[$name]}" "${IMG_VERIFY[$name]//\"/\'}" "${IMG_NOTE[$name]}"
    done
} > "$OUT/images.csv"

# ---------------------------------------------------------------- measurement
cat > "$OUT/meta.json" <<EOF
{
  "mode": "$MODE",
  "command": "benches/e2e/run.sh $ARGS_ORIG",
  "date_utc": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "rounds": $ROUNDS,
  "scale_note": "$SCALE_NOTE",
  "kernel": "$(uname -r)",
  "cpu": "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo) x $(nproc)",
  "memory_gib": $(awk '/MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo),
  "cgroup": "$CG_MODE",
  "git_commit": "$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)",
  "streamdisk": "$SD_VERSION",
  "peers_only": $([ -n "$PEERS_ONLY" ] && echo true || echo false),
  "throttle_rate_per_connection": "$rate",
  "qemu_img": "$(qemu-img --version | head -n1)",
  "nbdkit": "$(nbdkit --version 2>/dev/null | head -n1)",
  "nginx": "$(nginx -v 2>&1 | head -n1)"
}
EOF

RES="$OUT/results.csv"
echo "run_id,round,group,image,variant,limit_mib,rc,wall_s,user_s,sys_s,cpu_s,peak_bytes,failcnt,oom_kills,t0,note" > "$RES"
total=$(( ${#PLAN[@]} * ROUNDS )); done_n=0; run_id=0
bench_start=$EPOCHREALTIME
for ((r = 1; r <= ROUNDS; r++)); do
    # Round-robin: the commands of each image take turns, and each round starts one later.
    declare -A seen=()
    order=()
    for line in "${PLAN[@]}"; do
        read -r g name loc v <<< "$line"
        [ -n "${seen[$name/$loc]:-}" ] && continue
        seen[$name/$loc]=1
        grp=()
        for l2 in "${PLAN[@]}"; do read -r _ n2 loc2 _ <<< "$l2"; [ "$n2/$loc2" = "$name/$loc" ] && grp+=("$l2"); done
        k=${#grp[@]}
        for ((j = 0; j < k; j++)); do order+=("${grp[$(( (j + r - 1) % k ))]}"); done
    done
    for line in "${order[@]}"; do
        read -r g name loc v <<< "$line"
        run_id=$((run_id + 1)); done_n=$((done_n + 1))
        dev=${IMG_DEV[$name]}; limit=$(variant_limit "$v"); cmd=$(variant_cmd "$v" "$loc")
        UPORT=$(free_port)
        reset_dev "$dev"; rm -f "$SCRATCH/tmpimage"; rm -rf "$SCRATCH/reg"
        tag=$(printf '%04d-%s-%s' "$run_id" "$name" "$v")
        export SD="$SD_BIN" SD_BASE="$SD_BASE_BIN" URL; URL=$(url_of "$name" "$loc")
        export IMG="${IMG_FILE[$name]}" IMG_LEN="${IMG_FBYTES[$name]}" DEV="$dev" SCRATCH
        cg_run "$limit" "$tag" "$OUT/samples/$tag.csv" "$OUT/logs/$tag.log" "$TIMEOUT" -- bash -c "$cmd"
        rm -f "$SCRATCH/tmpimage"; rm -rf "$SCRATCH/reg"; reset_dev "$dev"
        printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,"%s"\n' "$run_id" "$r" "$g" "$name" "$v" \
            "$limit" "$R_RC" "$R_WALL" "$R_USER" "$R_SYS" \
            "$(awk -v a="$R_USER" -v b="$R_SYS" 'BEGIN{printf "%.2f", a + b}')" \
            "$R_PEAK" "$R_FAILCNT" "$R_OOM" "$R_T0" "$R_NOTE" >> "$RES"
        status="ok"; [ "$R_RC" = 0 ] || status="rc=$R_RC $(tail -n1 "$OUT/logs/$tag.log" | cut -c1-100)"
        lim_s="limit $limit MiB"; [ "$limit" = 0 ] && lim_s="no limit"
        log "[$done_n/$total] round $r  $name  $v ($lim_s): wall ${R_WALL}s cpu $(awk -v a="$R_USER" -v b="$R_SYS" 'BEGIN{printf "%.2f", a + b}')s peak $(human "${R_PEAK:-0}") oom=$R_OOM $status ${R_NOTE}"
    done
    unset seen
done
log "measurement took $(awk -v a="$bench_start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b - a}') s"

nginx_stop
registry_stop
s3_stop

# ---------------------------------------------------------------- report
if [ -n "$REPORT_BIN" ]; then
    "$REPORT_BIN" "$OUT" | tee "$OUT/summary.txt"
else
    column -s, -t < "$RES"
fi
if [ -n "$PUBLISH" ]; then
    dest="$REPO/docs/bench"; [ "$MODE" = quick ] && dest="$REPO/docs/bench-quick"
    mkdir -p "$dest"
    cp "$OUT"/summary.md "$OUT"/summary.json "$OUT"/results.csv "$OUT"/images.csv "$OUT"/meta.json "$dest"/ 2>/dev/null
    cp "$OUT"/figures/*.svg "$dest"/ 2>/dev/null
    log "published the summary and figures to $dest"
fi
log "results in $OUT"
