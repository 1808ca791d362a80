#!/usr/bin/env bash
# End-to-end test of the container image, run the way CDI runs its importer pod.
#
# It builds localhost/streamdisk:latest with scripts/build-image.sh (or reuses it when
# STREAMDISK_IMAGE_PREBUILT=1), then runs the image with podman as the import controller would:
# the CDI environment variables (including the empty ones CDI always sets), UID 107, every
# capability dropped, no-new-privileges, `-v=1` appended to the entrypoint, the target as a loop
# device mapped to /dev/cdi-block-volume or a directory bound at /data, and a file bound at
# /dev/termination-log. The source is a loopback HTTP(S) server on the host (--network host).
#
# Cases:
#   image-contents  the image holds only the binary and its cdi-importer symlink (no /scratch, no shell)
#   help            the binary runs inside the image
#   convert-https-block  the plain CLI (`streamdisk convert --ca-dir`) in the same hardened container
#   http-block      qcow2 over HTTP into a loop device prefilled with garbage
#   https-block     the same over HTTPS by host name (--add-host), CA in /certs via IMPORTER_CERT_DIR
#   http-fs         filesystem target: /data/disk.img, resized as CDI does
#   too-small       an image larger than the device: exit 1 and CDI's size message
#   memory-64m      a larger image (128 MiB of data) into a loop device under --memory 64m, with
#                   the progress metric scraped over HTTPS and parsed with the controller's regex
#   upload-server   the upload image (localhost/streamdisk-uploadserver) run as CDI's upload pod:
#                   TLS with a client certificate named as CDI's proxy, the sample qcow2 sent
#                   with curl, /data/disk.img and CDI's "Upload Complete" termination message
#
# Every case checks device or file contents byte for byte against `qemu-img convert -O raw`, and
# the termination message against CDI's format. The last line is the summary:
#   container e2e: PASS (N cases, T s)   or   container e2e: FAIL (...)
# and the exit status is non-zero on any failure.
#
# Needs root (loop devices, podman storage), podman, buildah (unless prebuilt), qemu-img, qemu-io,
# openssl, python3, losetup, curl. Without root it prints SKIP and exits 0.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

IMAGE=${IMAGE:-localhost/streamdisk:latest}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
PODMAN=(podman --storage-driver "$STORAGE_DRIVER" --runtime runc)
# Test host name for the HTTPS case; .test is reserved (RFC 2606), so it can never be real.
TLS_HOST=images.streamdisk.test
# CDI's owner UID label value is the PVC's UID: any UUID will do.
OWNER_UID=5b1c6e3a-2f4d-4c36-9a53-0d6a8f2e7c41

t_start=$SECONDS
log() { printf '[container-e2e %3ds] %s\n' "$((SECONDS - t_start))" "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    echo "container e2e: SKIP (needs root for loop devices and podman storage)"
    exit 0
fi
missing=()
for tool in podman qemu-img qemu-io openssl python3 losetup readelf curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${STREAMDISK_IMAGE_PREBUILT:-0} != 1 ]] && ! command -v buildah >/dev/null && ! command -v podman >/dev/null; then
    missing+=(buildah)
fi
if ((${#missing[@]})); then
    echo "container e2e: FAIL (missing tools: ${missing[*]})"
    exit 1
fi

work=$(mktemp -d /tmp/streamdisk-ctr-e2e.XXXXXX)
chmod 0755 "$work"
# Loop devices and container names are recorded in files, not arrays: the cases run in
# subshells (to capture their messages), and the cleanup must see what they made.
: >"$work/loops"
: >"$work/containers"
pids=()

cleanup() {
    local c p l
    # A second signal must not cut the cleanup short (the TERM trap's `exit` would end it here).
    trap '' INT TERM
    while read -r c; do
        "${PODMAN[@]}" container exists "$c" 2>/dev/null && "${PODMAN[@]}" rm -f "$c" >/dev/null 2>&1
    done <"$work/containers"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    while read -r l; do losetup -d "$l" 2>/dev/null; done <"$work/loops"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "container e2e: FAIL (interrupted)"; exit 130' INT TERM

results=()   # "name PASS|FAIL detail"
http_port=
https_port=
record() { results+=("$1 $2 ${3:-}"); log "$1: $2${3:+ ($3)}"; }

# --- helpers -------------------------------------------------------------------------------

# new_loop SIZE_BYTES: a loop device over a file full of 0xEE bytes (so that zero ranges of the
# image must really be written as zeros), owned by UID 107 like a CDI block PVC. Prints the device.
new_loop() {
    local size=$1 backing
    backing=$(mktemp "$work/loop.XXXXXX")
    # tr turns an exact number of zero bytes into 0xEE: a closed pipe cannot cut it short.
    head -c "$size" /dev/zero | tr '\0' '\356' >"$backing" || return 1
    local dev
    dev=$(losetup -f --show --direct-io=on "$backing") || return 1
    echo "$dev" >>"$work/loops"
    chown 107:107 "$dev" && chmod 0660 "$dev" || return 1
    echo "$dev"
}

# start_server VAR DIR [CERT KEY]: serves DIR on a free loopback port and stores the port in VAR.
# Not meant for $(...): the server would hold the substitution's pipe open and $! would be lost.
start_server() {
    local -n _port=$1
    local dir=$2 cert=${3:-} key=${4:-} portfile
    portfile=$(mktemp -u "$work/port.XXXXXX")
    python3 "$here/serve.py" --dir "$dir" --port-file "$portfile" ${cert:+--cert "$cert" --key "$key"} \
        </dev/null >/dev/null 2>>"$work/server.log" &
    pids+=($!)
    local _
    for _ in $(seq 100); do
        if [[ -s $portfile ]]; then
            _port=$(cat "$portfile")
            return 0
        fi
        sleep 0.1
    done
    echo "server did not start: $(tail -3 "$work/server.log")" >&2
    return 1
}

# make_ca_and_cert: a CA and a server certificate for $TLS_HOST signed by it, in $work/tls.
# The CA goes alone into $work/certs (what CDI mounts at /certs from the cert ConfigMap).
make_ca_and_cert() {
    local d=$work/tls
    mkdir -p "$d" "$work/certs"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=streamdisk e2e test CA" -keyout "$d/ca.key" -out "$d/ca.crt" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        2>>"$work/openssl.log" || return 1
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=$TLS_HOST" -keyout "$d/server.key" -out "$d/server.csr" 2>>"$work/openssl.log" || return 1
    printf '%s\n' "subjectAltName=DNS:$TLS_HOST" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/server.ext" -out "$d/server.crt" 2>>"$work/openssl.log" || return 1
    cp "$d/ca.crt" "$work/certs/ca.crt"
    chmod 0755 "$work/certs" && chmod 0644 "$work/certs/ca.crt"
}

# cdi_env SOURCE ENDPOINT IMAGE_SIZE OVERHEAD: the environment CDI's import controller gives the
# importer container (pkg/controller/import-controller.go, makeImportEnv), empty values included.
cdi_env() {
    local -n _out=$1
    _out=(
        -e IMPORTER_SOURCE=http
        -e "IMPORTER_ENDPOINT=$2"
        -e IMPORTER_CONTENTTYPE=kubevirt
        -e "IMPORTER_IMAGE_SIZE=$3"
        -e "OWNER_UID=$OWNER_UID"
        -e "FILESYSTEM_OVERHEAD=$4"
        -e INSECURE_TLS=false
        -e IMPORTER_DISK_ID= -e IMPORTER_UUID= -e IMPORTER_PULL_METHOD=
        -e IMPORTER_READY_FILE= -e IMPORTER_DONE_FILE= -e IMPORTER_BACKING_FILE=
        -e IMPORTER_THUMBPRINT= -e http_proxy= -e https_proxy= -e no_proxy=
        -e IMPORTER_CURRENT_CHECKPOINT= -e IMPORTER_PREVIOUS_CHECKPOINT= -e IMPORTER_FINAL_CHECKPOINT=
        -e PREALLOCATION=false -e CACHE_MODE= -e IMPORTER_REGISTRY_IMAGE_ARCHITECTURE=
        -e IMPORTER_CHECKSUM=
    )
}

# run_importer NAME TERMLOG [podman run options...]: runs the image as CDI would, with `-v=1`
# appended to the entrypoint like the controller does. Output goes to $work/NAME.log.
# Returns the container's exit status.
run_importer() {
    local name=$1 termlog=$2
    shift 2
    : >"$termlog"
    chown 107:107 "$termlog"
    local cname="streamdisk-e2e-$name-$$"
    echo "$cname" >>"$work/containers"
    local t0=$SECONDS rc
    "${PODMAN[@]}" run --rm --name "$cname" \
        --ulimit nofile=20000:20000 --ulimit nproc=1000:1000 \
        --user 107 --group-add 107 --cap-drop=ALL --security-opt no-new-privileges \
        --network host \
        -v "$termlog:/dev/termination-log" \
        "$@" "$IMAGE" -v=1 >"$work/$name.log" 2>&1
    rc=$?
    log "$name: container exited $rc after $((SECONDS - t0)) s"
    return $rc
}

SUCCESS_MSG='{"scratchSpaceRequired":false,"preallocationApplied":false,"message":"Import Complete"}'

# check_success NAME RC TERMLOG: exit 0 and CDI's success message.
check_success() {
    local name=$1 rc=$2 termlog=$3 msg
    msg=$(cat "$termlog")
    if [[ $rc -ne 0 ]]; then
        echo "exit status $rc, termination message: ${msg:-<empty>}; last log lines: $(tail -5 "$work/$name.log" | tr '\n' ' ')"
        return 1
    fi
    if [[ $msg != "$SUCCESS_MSG" ]]; then
        echo "termination message is '$msg', expected '$SUCCESS_MSG'"
        return 1
    fi
}

# compare_prefix TARGET REFERENCE: TARGET's first size(REFERENCE) bytes equal REFERENCE.
compare_prefix() {
    local target=$1 ref=$2 n
    n=$(stat -c %s "$ref")
    if ! cmp -n "$n" "$target" "$ref" >/dev/null 2>&1; then
        echo "contents differ from qemu-img convert -O raw: $(cmp -n "$n" "$target" "$ref" 2>&1 | head -1)"
        return 1
    fi
}

# --- cases ---------------------------------------------------------------------------------

case_image_contents() {
    local mnt files expected
    mnt=$("${PODMAN[@]}" image mount "$IMAGE" 2>&1) || { echo "podman image mount failed: $mnt"; return 1; }
    files=$(cd "$mnt" && find . -mindepth 1 -printf '%y %p%l\n' | sort)
    "${PODMAN[@]}" image unmount "$IMAGE" >/dev/null 2>&1
    expected=$(printf '%s\n' "d ./usr" "d ./usr/bin" "f ./usr/bin/streamdisk" \
        "l ./usr/bin/cdi-importerstreamdisk" | sort)
    if [[ $files != "$expected" ]]; then
        echo "image file list is [$(echo "$files" | tr '\n' ',')], expected [$(echo "$expected" | tr '\n' ',')]"
        return 1
    fi
    local cfg
    cfg=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}|{{json .Config.Entrypoint}}' "$IMAGE") || return 1
    if [[ $cfg != '107|["/usr/bin/cdi-importer","-alsologtostderr"]' ]]; then
        echo "image config is '$cfg', expected user 107 and the cdi-importer entrypoint"
        return 1
    fi
}

case_help() {
    local out rc
    out=$("${PODMAN[@]}" run --rm --ulimit nofile=20000:20000 --ulimit nproc=1000:1000 \
        --cap-drop=ALL --security-opt no-new-privileges --network none \
        --entrypoint /usr/bin/streamdisk "$IMAGE" --help 2>&1)
    rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "streamdisk --help exited $rc: $(echo "$out" | head -3 | tr '\n' ' ')"
        return 1
    fi
    if ! grep -q convert <<<"$out"; then
        echo "streamdisk --help does not mention 'convert': $(echo "$out" | head -3 | tr '\n' ' ')"
        return 1
    fi
}

# block_case NAME URL [extra podman options...]: import URL into a fresh loop device.
block_case() {
    local name=$1 url=$2
    shift 2
    local dev termlog=$work/$name.termlog env=() rc
    dev=$(new_loop $((8 * 1024 * 1024))) || { echo "cannot set up a loop device"; return 1; }
    cdi_env env "$url" 8Mi 0
    run_importer "$name" "$termlog" "${env[@]}" --device "$dev:/dev/cdi-block-volume" "$@"
    rc=$?
    check_success "$name" "$rc" "$termlog" || return 1
    compare_prefix "$dev" "$work/sample.raw" || return 1
}

case_http_block() {
    block_case http-block "http://127.0.0.1:$http_port/sample.qcow2"
}

case_https_block() {
    block_case https-block "https://$TLS_HOST:$https_port/sample.qcow2" \
        --add-host "$TLS_HOST:127.0.0.1" \
        -v "$work/certs:/certs:ro" -e IMPORTER_CERT_DIR=/certs
}

# The plain CLI in the same hardened container: `streamdisk convert URL DEVICE` over HTTPS by
# host name with the test CA via --ca-dir. This covers the image's use outside CDI.
case_convert_https_block() {
    local name=convert-https-block dev rc
    dev=$(new_loop $((8 * 1024 * 1024))) || { echo "cannot set up a loop device"; return 1; }
    local cname="streamdisk-e2e-$name-$$"
    echo "$cname" >>"$work/containers"
    "${PODMAN[@]}" run --rm --name "$cname" \
        --ulimit nofile=20000:20000 --ulimit nproc=1000:1000 \
        --user 107 --group-add 107 --cap-drop=ALL --security-opt no-new-privileges \
        --network host --add-host "$TLS_HOST:127.0.0.1" -v "$work/certs:/certs:ro" \
        --device "$dev:/dev/target" --entrypoint /usr/bin/streamdisk "$IMAGE" \
        convert --ca-dir /certs "https://$TLS_HOST:$https_port/sample.qcow2" /dev/target \
        >"$work/$name.log" 2>&1
    rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "streamdisk convert exited $rc: $(tail -3 "$work/$name.log" | tr '\n' ' ')"
        return 1
    fi
    compare_prefix "$dev" "$work/sample.raw" || return 1
}

case_http_fs() {
    local name=http-fs termlog=$work/http-fs.termlog env=() rc data=$work/data
    mkdir -p "$data" && chown 107:107 "$data" && chmod 0770 "$data"
    cdi_env env "http://127.0.0.1:$http_port/sample.qcow2" 8Mi 0.055
    run_importer "$name" "$termlog" "${env[@]}" -v "$data:/data"
    rc=$?
    check_success "$name" "$rc" "$termlog" || return 1
    local img=$data/disk.img
    [[ -f $img ]] || { echo "/data/disk.img was not created (found: $(find "$data" -mindepth 1 -printf '%f '))"; return 1; }
    compare_prefix "$img" "$work/sample.raw" || return 1
    # CDI (pkg/importer/data-processor.go) grows disk.img to the usable space: available space is
    # min(statfs free space, IMAGE_SIZE), usable is ceil(available / (1 + overhead)) rounded down
    # to 1 MiB. This directory's filesystem has far more than 8 MiB free, so with IMAGE_SIZE=8Mi
    # and overhead 0.055 that is ceil(8388608 / 1.055) = 7951288, rounded down to 7 MiB.
    local size want vsize
    want=$(python3 -c 'import math; print(math.ceil(8388608 / 1.055) // 1048576 * 1048576)')
    size=$(stat -c %s "$img")
    if [[ $size -ne $want ]]; then
        echo "disk.img is $size bytes, expected $want (IMPORTER_IMAGE_SIZE=8Mi, FILESYSTEM_OVERHEAD=0.055)"
        return 1
    fi
    vsize=$(stat -c %s "$work/sample.raw")
    if ! cmp -s -i "$vsize:0" -n $((size - vsize)) "$img" /dev/zero; then
        echo "disk.img is not zero after the virtual size ($vsize bytes)"
        return 1
    fi
    local owner
    owner=$(stat -c %u "$img")
    [[ $owner == 107 ]] || { echo "disk.img is owned by UID $owner, expected 107"; return 1; }
}

case_too_small() {
    local name=too-small termlog=$work/too-small.termlog env=() rc dev msg
    dev=$(new_loop $((2 * 1024 * 1024))) || { echo "cannot set up a loop device"; return 1; }
    cdi_env env "http://127.0.0.1:$http_port/sample.qcow2" 2Mi 0
    run_importer "$name" "$termlog" "${env[@]}" --device "$dev:/dev/cdi-block-volume"
    rc=$?
    msg=$(cat "$termlog")
    log "$name: termination message: $msg"
    if [[ $rc -eq 0 ]]; then
        echo "exit status 0 for an image larger than the device (message: $msg)"
        return 1
    fi
    if [[ $msg != *"is larger than the reported available storage"* ]]; then
        echo "termination message '$msg' lacks 'is larger than the reported available storage'"
        return 1
    fi
}

case_memory_64m() {
    local name=memory-64m termlog=$work/memory-64m.termlog env=() rc dev
    dev=$(new_loop $((160 * 1024 * 1024))) || { echo "cannot set up a loop device"; return 1; }
    cdi_env env "http://127.0.0.1:$http_port/big.qcow2" 160Mi 0
    sample_peak_memory "streamdisk-e2e-$name-$$" "$work/$name.peak" &
    local sampler=$!
    # Scrape the progress metric during this (longest) import, as the controller does. A free
    # port instead of 8443, so that nothing else on the host can answer in its place.
    local mport scraper
    mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 "$here/scrape.py" --port "$mport" --owner-uid "$OWNER_UID" \
        --out "$work/$name.metrics" --until-file "$work/$name.done" </dev/null >/dev/null 2>&1 &
    scraper=$!
    run_importer "$name" "$termlog" "${env[@]}" --device "$dev:/dev/cdi-block-volume" \
        --memory 64m --memory-swap 64m -e "STREAMDISK_METRICS_PORT=$mport"
    rc=$?
    touch "$work/$name.done"
    wait "$sampler" "$scraper"
    check_metric_samples "$name" "$work/$name.metrics" || return 1
    local peak
    peak=$(cat "$work/$name.peak" 2>/dev/null)
    log "$name: peak container memory (cgroup, page cache included): ${peak:-not sampled}"
    if [[ $rc -eq 137 ]]; then
        echo "killed (exit 137): the import did not fit in 64 MiB"
        return 1
    fi
    check_success "$name" "$rc" "$termlog" || return 1
    compare_prefix "$dev" "$work/big.raw" || return 1
}

# check_metric_samples NAME FILE: the progress values scraped (one per line) all parse with the
# controller's regex, stay within 0..100 and never go down. No samples at all is only logged: a
# fast import may end between two scrapes.
check_metric_samples() {
    local name=$1 file=$2 n
    n=$(grep -c . "$file" 2>/dev/null)
    if [[ ${n:-0} -eq 0 ]]; then
        log "$name: progress metric: no samples caught"
        return 0
    fi
    log "$name: progress metric: $n samples, first $(head -1 "$file"), last $(tail -1 "$file")"
    if grep -q '^MALFORMED' "$file"; then
        echo "progress metric does not parse with the controller's regex: $(grep -m1 '^MALFORMED' "$file")"
        return 1
    fi
    if ! awk 'BEGIN { prev = -1 } { if ($1 < prev || $1 > 100) exit 1; prev = $1 }' "$file"; then
        echo "progress metric goes down or above 100: $(tr '\n' ' ' <"$file" | head -c 300)"
        return 1
    fi
}

# sample_peak_memory CONTAINER OUTFILE: while CONTAINER runs, copies its cgroup v1
# memory.max_usage_in_bytes (a high-water mark) to OUTFILE as "N MiB". The cgroup disappears when
# the container exits, so the last value read is the peak up to at most one poll before the end.
# Informational only; gives up quietly where the cgroup is not found (cgroup v2, systemd manager).
sample_peak_memory() {
    local name=$1 out=$2 id="" f="" v _
    for _ in $(seq 200); do
        id=$("${PODMAN[@]}" inspect --format '{{.Id}}' "$name" 2>/dev/null) && [[ -n $id ]] && break
        sleep 0.05
    done
    [[ -n $id ]] || return 0
    f=/sys/fs/cgroup/memory/libpod_parent/libpod-$id/memory.max_usage_in_bytes
    while v=$(cat "$f" 2>/dev/null); do
        echo "$((v / 1048576)) MiB" >"$out"
        sleep 0.05
    done
}

# memory_limit_works: podman here can enforce --memory (cgroup memory controller available).
memory_limit_works() {
    local info
    info=$("${PODMAN[@]}" info --format '{{.Host.CgroupsVersion}} {{.Host.CgroupControllers}}' 2>/dev/null)
    [[ $info == *memory* ]]
}

# --- the upload server image ---------------------------------------------------------------

UPLOAD_IMAGE=${UPLOAD_IMAGE:-localhost/streamdisk-uploadserver:latest}
UPLOAD_MSG='{"preallocationApplied":false,"message":"Upload Complete"}'

# make_upload_certs: the upload pod's server certificate for 127.0.0.1 and a client certificate
# with CDI's proxy CN, both signed by the test CA, in $work/upload-tls (mounted at /etc/tls).
make_upload_certs() {
    local d=$work/upload-tls t=$work/tls
    mkdir -p "$d"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=cdi-upload-server" -keyout "$d/tls.key" -out "$d/tls.csr" 2>>"$work/openssl.log" || return 1
    printf '%s\n' "subjectAltName=IP:127.0.0.1" "extendedKeyUsage=serverAuth" >"$d/server.ext"
    openssl x509 -req -in "$d/tls.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/server.ext" -out "$d/tls.crt" 2>>"$work/openssl.log" || return 1
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=client.upload-server.cdi.kubevirt.io" -keyout "$d/client.key" -out "$d/client.csr" \
        2>>"$work/openssl.log" || return 1
    printf '%s\n' "extendedKeyUsage=clientAuth" >"$d/client.ext"
    openssl x509 -req -in "$d/client.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/client.ext" -out "$d/client.crt" 2>>"$work/openssl.log" || return 1
    cp "$t/ca.crt" "$d/ca.crt"
    chmod 0755 "$d" && chmod 0644 "$d"/*
}

case_upload_server() {
    local name=upload-server termlog=$work/upload-server.termlog data=$work/upload-data rc port code
    make_upload_certs || { echo "could not make the upload certificates"; return 1; }
    mkdir -p "$data" && chown 107:107 "$data" && chmod 0770 "$data"
    : >"$termlog" && chown 107:107 "$termlog"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    local cname="streamdisk-e2e-$name-$$"
    echo "$cname" >>"$work/containers"
    # The environment CDI's upload controller sets (makeUploadPodContainers), -v=1 appended.
    "${PODMAN[@]}" run -d --name "$cname" \
        --ulimit nofile=20000:20000 --ulimit nproc=1000:1000 \
        --user 107 --group-add 107 --cap-drop=ALL --security-opt no-new-privileges \
        --network host -v "$termlog:/dev/termination-log" -v "$work/upload-tls:/etc/tls:ro" \
        -v "$data:/data" \
        -e TLS_KEY_FILE=/etc/tls/tls.key -e TLS_CERT_FILE=/etc/tls/tls.crt \
        -e CLIENT_CERT_FILE=/etc/tls/ca.crt -e FILESYSTEM_OVERHEAD=0 -e UPLOAD_IMAGE_SIZE=8Mi \
        -e CLIENT_NAME=client.upload-server.cdi.kubevirt.io -e PREALLOCATION=false \
        -e TLS_CIPHERS= -e TLS_MIN_VERSION= -e LISTEN_ADDRESS=127.0.0.1 -e "LISTEN_PORT=$port" \
        "$UPLOAD_IMAGE" -v=1 >/dev/null || { echo "podman run failed"; return 1; }
    local ok=
    for _ in $(seq 100); do
        if curl -sS --cacert "$work/upload-tls/ca.crt" "https://127.0.0.1:$port/healthz" 2>/dev/null | grep -q OK; then
            ok=1; break
        fi
        sleep 0.1
    done
    [[ -n $ok ]] || { echo "the upload server never answered /healthz"; "${PODMAN[@]}" logs "$cname" 2>&1 | tail -5; return 1; }
    code=$(curl -sS --cacert "$work/upload-tls/ca.crt" --cert "$work/upload-tls/client.crt" \
        --key "$work/upload-tls/client.key" -o /dev/null -w '%{http_code}' \
        --data-binary "@$work/www/sample.qcow2" "https://127.0.0.1:$port/v1beta1/upload")
    rc=$("${PODMAN[@]}" wait "$cname" 2>/dev/null)
    "${PODMAN[@]}" logs "$cname" >"$work/$name.log" 2>&1
    "${PODMAN[@]}" rm -f "$cname" >/dev/null 2>&1
    log "$name: upload answered $code, container exited $rc"
    [[ $code == 200 ]] || { echo "upload answered $code"; return 1; }
    [[ $rc == 0 ]] || { echo "container exited $rc"; return 1; }
    local msg
    msg=$(cat "$termlog")
    [[ $msg == "$UPLOAD_MSG" ]] || { echo "termination message is '$msg', expected '$UPLOAD_MSG'"; return 1; }
    compare_prefix "$data/disk.img" "$work/sample.raw" || return 1
}

run_case() {
    local name=$1 fn=$2 out rc t0=$SECONDS
    log "$name: start"
    # The case's stdout is its failure message; its stderr (progress lines) goes straight through.
    out=$("$fn")
    rc=$?
    if [[ $rc -eq 0 ]]; then
        record "$name" PASS "$((SECONDS - t0)) s"
    else
        record "$name" FAIL "$(echo "$out" | tail -3 | tr '\n' ' ')"
        if [[ -f $work/$name.log ]]; then
            log "$name: container log (last 20 lines):"
            tail -20 "$work/$name.log" >&2
        fi
    fi
}

# --- main ----------------------------------------------------------------------------------

if [[ ${STREAMDISK_IMAGE_PREBUILT:-0} == 1 ]]; then
    log "reusing $IMAGE (STREAMDISK_IMAGE_PREBUILT=1)"
    if ! "${PODMAN[@]}" image exists "$IMAGE"; then
        echo "container e2e: FAIL ($IMAGE does not exist and STREAMDISK_IMAGE_PREBUILT=1)"
        exit 1
    fi
else
    log "building $IMAGE with scripts/build-image.sh"
    t0=$SECONDS
    if ! IMAGE=$IMAGE "$root/scripts/build-image.sh" >"$work/build.log" 2>&1; then
        tail -30 "$work/build.log" >&2
        echo "container e2e: FAIL (image build failed; see the log above)"
        exit 1
    fi
    log "image built in $((SECONDS - t0)) s: $(tail -1 "$work/build.log")"
fi
image_size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
log "image size: $image_size bytes"

# Test images, made now: the sample (mixed data, compressed qcow2) and a bigger one for the memory
# limit (128 MiB of incompressible data in a 160 MiB plain qcow2, more than twice the limit).
mkdir -p "$work/www"
"$root/images/make-sample.sh" "$work/www/sample.qcow2" >/dev/null || {
    echo "container e2e: FAIL (images/make-sample.sh failed)"; exit 1; }
qemu-img convert -O raw "$work/www/sample.qcow2" "$work/sample.raw" || exit 1
if memory_limit_works; then
    qemu-img create -q -f qcow2 "$work/www/big.qcow2" 160M
    head -c $((128 * 1024 * 1024)) /dev/zero \
        | openssl enc -aes-256-ctr -pbkdf2 -nosalt -pass pass:streamdisk-e2e 2>/dev/null >"$work/big.data"
    qemu-io -f qcow2 -c "write -s $work/big.data 16M 128M" "$work/www/big.qcow2" >/dev/null || exit 1
    rm -f "$work/big.data"
    qemu-img convert -O raw "$work/www/big.qcow2" "$work/big.raw" || exit 1
fi
chmod -R a+rX "$work/www"

if ! make_ca_and_cert; then
    tail -5 "$work/openssl.log" >&2
    echo "container e2e: FAIL (could not make the test CA and certificate)"
    exit 1
fi
start_server http_port "$work/www" || { echo "container e2e: FAIL (HTTP server)"; exit 1; }
start_server https_port "$work/www" "$work/tls/server.crt" "$work/tls/server.key" || {
    echo "container e2e: FAIL (HTTPS server)"; exit 1; }
log "HTTP on 127.0.0.1:$http_port, HTTPS on 127.0.0.1:$https_port as $TLS_HOST"

run_case image-contents case_image_contents
run_case help case_help
run_case convert-https-block case_convert_https_block
run_case http-block case_http_block
run_case https-block case_https_block
run_case http-fs case_http_fs
run_case too-small case_too_small
if memory_limit_works; then
    run_case memory-64m case_memory_64m
else
    log "memory-64m: skipped: podman reports no cgroup memory controller, so --memory cannot be enforced"
fi

if "${PODMAN[@]}" image exists "$UPLOAD_IMAGE"; then
    run_case upload-server case_upload_server
else
    record upload-server FAIL "$UPLOAD_IMAGE was not built"
fi

failed=()
for r in "${results[@]}"; do
    [[ $r == *" FAIL "* ]] && failed+=("${r%% *}")
done
elapsed=$((SECONDS - t_start))
if ((${#failed[@]})); then
    echo "container e2e: FAIL (${#failed[@]} of ${#results[@]} cases failed: ${failed[*]}; image $image_size bytes; ${elapsed} s)"
    exit 1
fi
echo "container e2e: PASS (${#results[@]} cases: ${results[*]%% *}; image $image_size bytes; ${elapsed} s)"
