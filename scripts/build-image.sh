#!/usr/bin/env bash
# Builds the streamdisk container image and tags it localhost/streamdisk:latest, then the upload
# server image, localhost/streamdisk-uploadserver:latest (same binary, entrypoint cdi-uploadserver).
#
#   1. static glibc binaries (`-C target-feature=+crt-static`) for an explicit
#      --target x86_64-unknown-linux-gnu, so they land in target/x86_64-unknown-linux-gnu/release/
#      and the ordinary `cargo build --release` binaries in target/release/ are untouched
#      (RUSTFLAGS differ, so cargo would otherwise rebuild them): streamdisk and
#      cdi-containerimage-server, in one cargo invocation (one fat-LTO pass over the shared crates);
#   2. a build context under target/image/rootfs/: in usr/bin/, streamdisk with its CDI names
#      (cdi-importer, cdi-image-size-detection, cdi-source-update-poller -> streamdisk) and
#      cdi-containerimage-server, a file of its own since CDI copies it into another image; in
#      bin/, a static busybox with the sh and cp links CDI's node-pull init container runs;
#   3. `buildah bud` (or `podman build`) of the top-level Containerfile, FROM scratch, so no base
#      image has to be pulled.
#
# Environment:
#   IMAGE            tag to build            (default localhost/streamdisk:latest)
#   UPLOAD_IMAGE     upload server image tag (default localhost/streamdisk-uploadserver:latest)
#   BUILDER          buildah | podman        (default: buildah if installed, else podman)
#   STORAGE_DRIVER   containers storage driver (default vfs: works without overlay support)
#   SKIP_CARGO=1     reuse the static binaries already built (fails if they are missing)
#   BUSYBOX          a static busybox (default /bin/busybox, from Debian's busybox-static)
#   CARGO_TARGET_DIR honoured as cargo does (default: target/ at the top of the repository)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

image=${IMAGE:-localhost/streamdisk:latest}
driver=${STORAGE_DRIVER:-vfs}
triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin=$target_dir/$triple/release/streamdisk
server=$target_dir/$triple/release/cdi-containerimage-server
busybox=${BUSYBOX:-/bin/busybox}
ctx=$target_dir/image

if [[ -z ${BUILDER:-} ]]; then
    if command -v buildah >/dev/null; then BUILDER=buildah
    elif command -v podman >/dev/null; then BUILDER=podman
    else echo "build-image.sh: neither buildah nor podman is installed" >&2; exit 1
    fi
fi

if [[ ${SKIP_CARGO:-0} != 1 ]]; then
    echo "build-image.sh: building static binaries for $triple" >&2
    # Add to (not replace) any RUSTFLAGS the caller set.
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
        cargo build --release --target "$triple" --bin streamdisk --bin cdi-containerimage-server
fi
for b in "$bin" "$server"; do
    [[ -x $b ]] || { echo "build-image.sh: $b missing; run without SKIP_CARGO=1" >&2; exit 1; }
done
[[ -x $busybox ]] || {
    echo "build-image.sh: $busybox missing; install busybox-static or set BUSYBOX" >&2; exit 1; }

# A dynamically linked binary would fail in a FROM scratch image (or in the user's image, for the
# server) with a bare "no such file or directory" (the missing ELF interpreter), so check first.
for b in "$bin" "$server" "$busybox"; do
    if readelf -l "$b" | grep -q 'Requesting program interpreter'; then
        echo "build-image.sh: $b is dynamically linked (has a PT_INTERP); the image needs static binaries" >&2
        exit 1
    fi
done

rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/bin" "$ctx/rootfs/bin"
install -m 0755 "$bin" "$ctx/rootfs/usr/bin/streamdisk"
# CDI runs each tool by its path; the binary picks the tool by that name.
for name in cdi-importer cdi-image-size-detection cdi-source-update-poller; do
    ln -s streamdisk "$ctx/rootfs/usr/bin/$name"
done
install -m 0755 "$server" "$ctx/rootfs/usr/bin/cdi-containerimage-server"
install -m 0755 "$busybox" "$ctx/rootfs/bin/busybox"
ln -s busybox "$ctx/rootfs/bin/sh"
ln -s busybox "$ctx/rootfs/bin/cp"

echo "build-image.sh: building $image with $BUILDER (storage driver $driver)" >&2
case $BUILDER in
    buildah) buildah --storage-driver "$driver" bud --layers=false -f "$root/Containerfile" -t "$image" "$ctx" ;;
    podman)  podman --storage-driver "$driver" build -f "$root/Containerfile" -t "$image" "$ctx" ;;
    *) echo "build-image.sh: BUILDER must be buildah or podman, not $BUILDER" >&2; exit 1 ;;
esac

size=
if command -v podman >/dev/null; then
    size=$(podman --storage-driver "$driver" image inspect --format '{{.Size}}' "$image")
fi
echo "build-image.sh: built $image: streamdisk $(stat -c %s "$bin") bytes, cdi-containerimage-server $(stat -c %s "$server") bytes, busybox $(stat -c %s "$busybox") bytes, image ${size:-(size unknown without podman)} bytes" >&2

# --- the upload server image ------------------------------------------------------------------
# CDI's upload pods run the image's entrypoint, so the upload server needs an image of its own:
# the same binary, reached through the cdi-uploadserver name (Containerfile.uploadserver).
upload_image=${UPLOAD_IMAGE:-localhost/streamdisk-uploadserver:latest}
upload_ctx=$target_dir/image-uploadserver
rm -rf "$upload_ctx"
mkdir -p "$upload_ctx/rootfs/usr/bin"
install -m 0755 "$bin" "$upload_ctx/rootfs/usr/bin/streamdisk"
ln -s streamdisk "$upload_ctx/rootfs/usr/bin/cdi-uploadserver"
echo "build-image.sh: building $upload_image with $BUILDER (storage driver $driver)" >&2
case $BUILDER in
    buildah) buildah --storage-driver "$driver" bud --layers=false -f "$root/Containerfile.uploadserver" -t "$upload_image" "$upload_ctx" ;;
    podman)  podman --storage-driver "$driver" build -f "$root/Containerfile.uploadserver" -t "$upload_image" "$upload_ctx" ;;
esac
echo "build-image.sh: built $upload_image" >&2
