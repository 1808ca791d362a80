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
#   image-contents  the image holds exactly the binaries docs/container.md lists (no /scratch), at
#                   most 16 MB, user 107, CDI's entrypoint, PATH set
#   help            every entry point's --help or -h inside the image (sh, cp and the CDI tools
#                   through PATH, as CDI names them)
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
#   node-pull-init  CDI's node-pull init container, `sh -c "cp /usr/bin/cdi-containerimage-server
#                   /shared/server"`, copies a runnable static server into the shared volume
#   server-help     that copied server, in a FROM scratch containerDisk image as UID 107, runs
#                   `/shared/server -h` (the DataImportCron digest pod) and exits 0 within 2 s
#   node-pull       the copied server in the containerDisk image with CDI's exact command, and the
#                   importer in its network namespace in node-pull mode: the disk, the labels from
#                   /info in the termination message, and the server's exit after the done file
#   bootc-refused   the server refuses an image with /ostree, in CDI's words
#   size-detection  cdi-image-size-detection as the clone controller runs it: qcow2, raw and the
#                   formats-issue formats streamdisk decodes against qemu-img info; exit codes 1-3
#   poller          cdi-source-update-poller against a TLS registry with htpasswd (the image pushed
#                   by buildah) and a stand-in for the Kubernetes API server (kube_api.py; no API
#                   server can run here) that checks the token, the content type and the patch
#
# Every case checks device or file contents byte for byte against `qemu-img convert -O raw`, and
# the termination message against CDI's format. The last line is the summary:
#   container e2e: PASS (N cases, T s)   or   container e2e: FAIL (...)
# and the exit status is non-zero on any failure.
#
# Needs root (loop devices, podman storage), podman, buildah, qemu-img, qemu-io, openssl, python3,
# losetup, curl, docker-registry and htpasswd (the poller case). Without root it prints SKIP and exits 0.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

IMAGE=${IMAGE:-localhost/streamdisk:latest}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
PODMAN=(podman --storage-driver "$STORAGE_DRIVER" --runtime runc)
BUILDAH=(buildah --storage-driver "$STORAGE_DRIVER")
# The largest image allowed (bytes, as podman reports them).
MAX_IMAGE_SIZE=16000000
# Every container runs hardened as CDI's pods are, as UID 107 (the file limits are explicit: the
# default would exceed what an unprivileged build host may set).
HARDENED=(--ulimit nofile=20000:20000 --ulimit nproc=1000:1000 --user 107 --cap-drop=ALL
    --security-opt no-new-privileges)
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
for tool in podman buildah qemu-img qemu-io openssl python3 losetup readelf curl docker-registry htpasswd; do
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
: >"$work/images"
: >"$work/pids"   # servers started inside cases (subshells)
pids=()

cleanup() {
    local c p l
    # A second signal must not cut the cleanup short (the TERM trap's `exit` would end it here).
    trap '' INT TERM
    while read -r c; do
        "${PODMAN[@]}" container exists "$c" 2>/dev/null && "${PODMAN[@]}" rm -f "$c" >/dev/null 2>&1
    done <"$work/containers"
    while read -r c; do
        "${PODMAN[@]}" rmi -f "$c" >/dev/null 2>&1
    done <"$work/images"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    while read -r p; do kill "$p" 2>/dev/null; done <"$work/pids"
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

# cdi_env VAR ENDPOINT IMAGE_SIZE OVERHEAD [PULL_METHOD READY_FILE DONE_FILE]: the environment
# CDI's import controller gives the importer container (pkg/controller/import-controller.go,
# makeImportEnv), empty values included; the last three are set for registry node pull.
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
        -e IMPORTER_DISK_ID= -e IMPORTER_UUID= -e "IMPORTER_PULL_METHOD=${5:-}"
        -e "IMPORTER_READY_FILE=${6:-}" -e "IMPORTER_DONE_FILE=${7:-}" -e IMPORTER_BACKING_FILE=
        -e IMPORTER_THUMBPRINT= -e http_proxy= -e https_proxy= -e no_proxy=
        -e IMPORTER_CURRENT_CHECKPOINT= -e IMPORTER_PREVIOUS_CHECKPOINT= -e IMPORTER_FINAL_CHECKPOINT=
        -e PREALLOCATION=false -e CACHE_MODE= -e IMPORTER_REGISTRY_IMAGE_ARCHITECTURE=
        -e IMPORTER_CHECKSUM=
    )
}

# run_importer NAME TERMLOG [podman run options...]: runs the image as CDI would, with `-v=1`
# appended to the entrypoint like the controller does. Output goes to $work/NAME.log.
# The network is the host's unless NET names another (`NET=container:X run_importer ...`).
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
        --network "${NET:-host}" \
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
    # What docs/container.md lists: the links carry their target after the name (find's %l).
    expected=$(printf '%s\n' "d ./usr" "d ./usr/bin" "f ./usr/bin/streamdisk" \
        "l ./usr/bin/cdi-importerstreamdisk" "l ./usr/bin/cdi-image-size-detectionstreamdisk" \
        "l ./usr/bin/cdi-source-update-pollerstreamdisk" "f ./usr/bin/cdi-containerimage-server" \
        "d ./bin" "f ./bin/busybox" "l ./bin/shbusybox" "l ./bin/cpbusybox" | sort)
    if [[ $files != "$expected" ]]; then
        echo "image file list is [$(echo "$files" | tr '\n' ',')], expected [$(echo "$expected" | tr '\n' ',')]"
        return 1
    fi
    local cfg
    cfg=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Env}}' "$IMAGE") || return 1
    if [[ $cfg != '107|["/usr/bin/cdi-importer","-alsologtostderr"]|["PATH=/usr/bin:/bin"]' ]]; then
        echo "image config is '$cfg', expected user 107, the cdi-importer entrypoint and PATH=/usr/bin:/bin"
        return 1
    fi
    if [[ $image_size -gt $MAX_IMAGE_SIZE ]]; then
        echo "the image is $image_size bytes, more than $MAX_IMAGE_SIZE"
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
    # The other entry points in one container, through sh and PATH as CDI names them; each
    # prints "NAME RC" and its usage must name one of its flags.
    local script='for t in "sh --help:-c" "cp --help:-R" "cdi-importer -h:-v" \
        "cdi-image-size-detection -h:-image-path" "cdi-source-update-poller -h:-certdir" \
        "cdi-containerimage-server -h:-image-dir"; do
        cmd=${t%%:*}; flag=${t#*:}
        out=$($cmd 2>&1); rc=$?
        case $out in *"$flag"*) ok=usage ;; *) ok=no-usage ;; esac
        echo "${cmd%% *} $rc $ok"
    done'
    out=$("${PODMAN[@]}" run --rm --ulimit nofile=20000:20000 --ulimit nproc=1000:1000 \
        --user 107 --cap-drop=ALL --security-opt no-new-privileges --network none \
        --entrypoint sh "$IMAGE" -c "$script" 2>&1)
    rc=$?
    local want
    want=$(printf '%s\n' "sh 0 usage" "cp 0 usage" "cdi-importer 0 usage" \
        "cdi-image-size-detection 0 usage" "cdi-source-update-poller 0 usage" \
        "cdi-containerimage-server 0 usage")
    if [[ $rc -ne 0 || $out != "$want" ]]; then
        echo "entry points' help (exit $rc): $(echo "$out" | tr '\n' ',')"
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

# --- the other CDI jobs run from the importer image -----------------------------------------

# make_ip_cert NAME: a server certificate for 127.0.0.1 (an IP SAN) signed by the test CA, in
# $work/tls/NAME.crt and NAME.key, readable by UID 107.
make_ip_cert() {
    local d=$work/tls n=$1
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$d/$n.key" -out "$d/$n.csr" 2>>"$work/openssl.log" || return 1
    printf '%s\n' "subjectAltName=IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$d/$n.ext"
    openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/$n.ext" -out "$d/$n.crt" 2>>"$work/openssl.log" || return 1
    chmod 0644 "$d/$n.crt" "$d/$n.key"
}

# scratch_image TAG SETUP [buildah config options...]: commits a FROM scratch image whose root
# filesystem the function SETUP fills (it gets the mounted root as $1). Prints nothing.
scratch_image() {
    local tag=$1 setup=$2 ctr mnt
    shift 2
    ctr=$("${BUILDAH[@]}" from scratch) || return 1
    mnt=$("${BUILDAH[@]}" mount "$ctr") || { "${BUILDAH[@]}" rm "$ctr" >/dev/null; return 1; }
    "$setup" "$mnt" || { "${BUILDAH[@]}" rm "$ctr" >/dev/null; return 1; }
    "${BUILDAH[@]}" umount "$ctr" >/dev/null
    if (($#)); then "${BUILDAH[@]}" config "$@" "$ctr" || return 1; fi
    echo "$tag" >>"$work/images"
    "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$tag" >/dev/null
}

# A containerDisk as users build them: FROM scratch, the disk under /disk/ owned by 107, mode 0440.
CONTAINERDISK=localhost/streamdisk-e2e-containerdisk:latest
fill_containerdisk() {
    mkdir -p "$1/disk" && cp "$work/www/sample.qcow2" "$1/disk/sample.qcow2" &&
        chown 107:107 "$1/disk/sample.qcow2" && chmod 0440 "$1/disk/sample.qcow2"
}
# The same with an ostree deployment: what CDI's server refuses as a bootc image.
fill_bootc() { fill_containerdisk "$1" && mkdir -p "$1/ostree/repo"; }

NODE_PULL_LABELS='{"scratchSpaceRequired":false,"preallocationApplied":false,"labels":{"instancetype.kubevirt.io/default-instancetype":"u1.small","kubevirt.io/os":"fedora"},"message":"Import Complete"}'

# The shared emptyDir of the node-pull pod (mode 0777, as the kubelet makes it).
shared=$work/shared

# CDI's init container (import-controller.go, dataimportcron-controller.go): the exact command.
case_node_pull_init() {
    mkdir -p "$shared" && chmod 0777 "$shared"
    local cname="streamdisk-e2e-init-$$" rc
    echo "$cname" >>"$work/containers"
    "${PODMAN[@]}" run --rm --name "$cname" "${HARDENED[@]}" --network none -v "$shared:/shared" \
        --entrypoint '["sh","-c","cp /usr/bin/cdi-containerimage-server /shared/server"]' \
        "$IMAGE" >"$work/node-pull-init.log" 2>&1
    rc=$?
    [[ $rc -eq 0 ]] || { echo "the init container exited $rc: $(tail -3 "$work/node-pull-init.log")"; return 1; }
    [[ -x $shared/server ]] || { echo "/shared/server is missing or not executable"; return 1; }
    if readelf -l "$shared/server" | grep -q 'Requesting program interpreter'; then
        echo "/shared/server is dynamically linked"
        return 1
    fi
    local mnt
    mnt=$("${PODMAN[@]}" image mount "$IMAGE") || return 1
    cmp -s "$mnt/usr/bin/cdi-containerimage-server" "$shared/server"
    rc=$?
    "${PODMAN[@]}" image unmount "$IMAGE" >/dev/null 2>&1
    [[ $rc -eq 0 ]] || { echo "/shared/server differs from the image's cdi-containerimage-server"; return 1; }
    log "node-pull-init: /shared/server is $(stat -c %s "$shared/server") bytes, owner $(stat -c %u "$shared/server")"
}

# The DataImportCron digest pod: the user's image runs `/shared/server -h` and must end at once.
case_server_help() {
    [[ -x $shared/server ]] || { echo "no /shared/server (node-pull-init failed)"; return 1; }
    local cname="streamdisk-e2e-server-help-$$" state
    echo "$cname" >>"$work/containers"
    "${PODMAN[@]}" run --name "$cname" "${HARDENED[@]}" \
        --network none -v "$shared:/shared" --entrypoint '["/shared/server","-h"]' \
        "$CONTAINERDISK" >"$work/server-help.log" 2>&1
    state=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}} {{.State.StartedAt.UnixNano}} {{.State.FinishedAt.UnixNano}}' "$cname") || return 1
    "${PODMAN[@]}" rm "$cname" >/dev/null 2>&1
    local code start end ms
    read -r code start end <<<"$state"
    ms=$(((end - start) / 1000000))
    log "server-help: exit $code after $ms ms inside the container"
    [[ $code -eq 0 ]] || { echo "/shared/server -h exited $code: $(head -3 "$work/server-help.log")"; return 1; }
    grep -q -- '-image-dir' "$work/server-help.log" || { echo "no usage printed: $(head -3 "$work/server-help.log")"; return 1; }
    ((ms <= 2000)) || { echo "/shared/server -h ran for $ms ms (more than 2 s)"; return 1; }
}

# A registry node-pull pod: the server sidecar in the containerDisk image (its own network
# namespace, no network but loopback), the importer joining that namespace as pod containers do.
case_node_pull() {
    [[ -x $shared/server ]] || { echo "no /shared/server (node-pull-init failed)"; return 1; }
    local name=node-pull termlog=$work/node-pull.termlog env=() rc dev srv="streamdisk-e2e-sidecar-$$"
    rm -f "$shared/ready" "$shared/done"
    dev=$(new_loop $((8 * 1024 * 1024))) || { echo "cannot set up a loop device"; return 1; }
    echo "$srv" >>"$work/containers"
    "${PODMAN[@]}" run -d --name "$srv" "${HARDENED[@]}" \
        --network none -v "$shared:/shared" \
        --entrypoint '["/shared/server","-p","8100","-image-dir","/disk","-ready-file","/shared/ready","-done-file","/shared/done"]' \
        "$CONTAINERDISK" >/dev/null || { echo "the server container did not start"; return 1; }
    cdi_env env "http://localhost:8100/disk.img" 8Mi 0 node /shared/ready /shared/done
    NET=container:$srv run_importer "$name" "$termlog" "${env[@]}" \
        --device "$dev:/dev/cdi-block-volume" -v "$shared:/shared"
    rc=$?
    local code
    code=$(timeout 20 "${PODMAN[@]}" wait "$srv" 2>/dev/null)
    "${PODMAN[@]}" logs "$srv" >"$work/node-pull-server.log" 2>&1
    log "node-pull: server log: $(tr '\n' '|' <"$work/node-pull-server.log" | head -c 400)"
    local msg
    msg=$(cat "$termlog")
    if [[ $rc -ne 0 || $msg != "$NODE_PULL_LABELS" ]]; then
        echo "importer exit $rc, termination message '$msg', expected '$NODE_PULL_LABELS'"
        return 1
    fi
    compare_prefix "$dev" "$work/sample.raw" || return 1
    [[ $code == 0 ]] || { echo "the server did not exit 0 after the done file (podman wait: '${code:-timeout}')"; return 1; }
    if [[ -e $shared/ready || -e $shared/done ]]; then
        echo "the server left $(ls "$shared" | tr '\n' ' ') in the shared volume"
        return 1
    fi
    grep -q 'Serving /disk on HTTP port: 8100' "$work/node-pull-server.log" ||
        { echo "the server did not log CDI's serving line"; return 1; }
}

case_bootc_refused() {
    [[ -x $shared/server ]] || { echo "no /shared/server (node-pull-init failed)"; return 1; }
    local cname="streamdisk-e2e-bootc-$$" rc out
    rm -f "$shared/ready" "$shared/done"
    echo "$cname" >>"$work/containers"
    out=$("${PODMAN[@]}" run --rm --name "$cname" "${HARDENED[@]}" --network none -v "$shared:/shared" \
        --entrypoint '["/shared/server","-p","8100","-image-dir","/disk","-ready-file","/shared/ready","-done-file","/shared/done"]' \
        localhost/streamdisk-e2e-bootc:latest 2>&1)
    rc=$?
    [[ $rc -eq 1 ]] || { echo "the server exited $rc on a bootc image: $out"; return 1; }
    [[ $out == *"bootc image detected"* ]] || { echo "no bootc message: $out"; return 1; }
    [[ ! -e $shared/ready ]] || { echo "a ready file was written for a bootc image"; return 1; }
}

# qemu_vsize IMG: qemu-img's virtual size.
qemu_vsize() {
    qemu-img info --output=json "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])'
}

# The clone controller's size-detection pod (pvc-clone-controller.go): the source PVC at /data.
case_size_detection() {
    local d=$work/sizes termlog=$work/size-detection.termlog cname rc msg want
    mkdir -p "$d/qcow2" "$d/raw"
    qemu-img create -q -f qcow2 "$d/qcow2/disk.img" 10G && qemu-io -f qcow2 -c "write -P 0x5a 1M 64k" "$d/qcow2/disk.img" >/dev/null || return 1
    head -c $((3 * 1024 * 1024 + 1000)) /dev/urandom >"$d/raw/disk.img"
    local fmt opts
    for fmt in vpc vhdx vdi vmdk; do
        case $fmt in vpc|vhdx) opts=subformat=dynamic ;; vdi) opts=static=off ;; vmdk) opts=subformat=monolithicSparse ;; esac
        mkdir -p "$d/$fmt"
        qemu-img create -q -f "$fmt" -o "$opts" "$d/$fmt/disk.img" 100M || return 1
        qemu-io -f "$fmt" -c "write -P 0x11 1M 64k" "$d/$fmt/disk.img" >/dev/null || return 1
    done
    chmod -R a+rX "$d"
    : >"$termlog" && chown 107:107 "$termlog"
    # Exactly as the controller runs it.
    cname="streamdisk-e2e-size-$$"
    echo "$cname" >>"$work/containers"
    "${PODMAN[@]}" run --rm --name "$cname" "${HARDENED[@]}" \
        --network none -v "$d/qcow2:/data" -v "$termlog:/dev/termination-log" \
        --entrypoint /usr/bin/cdi-image-size-detection "$IMAGE" -image-path /data/disk.img \
        >"$work/size-detection.log" 2>&1
    rc=$?
    msg=$(cat "$termlog")
    want=$(qemu_vsize "$d/qcow2/disk.img")
    if [[ $rc -ne 0 || $msg != "$want" ]]; then
        echo "qcow2: exit $rc, termination message '$msg', expected '$want': $(tail -2 "$work/size-detection.log")"
        return 1
    fi
    # The other files and the failures in one container (sh and PATH from the image).
    local script='for c in "raw/disk.img" "vpc/disk.img" "vhdx/disk.img" "vdi/disk.img" "vmdk/disk.img" \
            "missing.img" "bad%zz.img" ""; do
        : >/dev/termination-log
        if [ -n "$c" ]; then cdi-image-size-detection -image-path "/data/$c" 2>/dev/null; else cdi-image-size-detection 2>/dev/null; fi
        rc=$?; msg=; read -r msg </dev/termination-log
        echo "${c:-none} $rc $msg"
    done'
    local out
    out=$("${PODMAN[@]}" run --rm --name "$cname" "${HARDENED[@]}" --network none -v "$d:/data" \
        -v "$termlog:/dev/termination-log" --entrypoint sh "$IMAGE" -c "$script" 2>&1) || {
        echo "the batch container failed: $out"; return 1; }
    log "size-detection: $(echo "$out" | tr '\n' '|')"
    local line file code got decoded=()
    while read -r file code got; do
        case $file in
            raw/disk.img|vpc/disk.img|vhdx/disk.img|vdi/disk.img|vmdk/disk.img)
                want=$(qemu_vsize "$d/$file")
                if [[ $code == 0 && $got == "$want" ]]; then
                    [[ $file == raw/* ]] || decoded+=("${file%%/*}")
                elif [[ $code == 2 && $file != raw/* ]]; then
                    log "size-detection: ${file%%/*} is not decoded by streamdisk yet (exit 2)"
                else
                    echo "$file: exit $code, message '$got', expected '$want'"
                    return 1
                fi ;;
            missing.img) [[ $code == 2 && -z $got ]] || { echo "missing file: exit $code, message '$got', expected 2 (invalid file)"; return 1; } ;;
            bad%zz.img) [[ $code == 3 && -z $got ]] || { echo "unparsable path: exit $code, expected 3 (invalid path)"; return 1; } ;;
            none) [[ $code == 1 ]] || { echo "no -image-path: exit $code, expected 1 (bad arguments)"; return 1; } ;;
        esac
    done <<<"$out"
    [[ $(grep -c . <<<"$out") -eq 8 ]] || { echo "expected 8 result lines, got: $out"; return 1; }
    log "size-detection: formats-issue formats sized like qemu-img: ${decoded[*]:-none yet}"
}

# A DataImportCron's poller CronJob (dataimportcron-controller.go, InitPollerPod).
case_poller() {
    local d=$work/poller rport kport
    mkdir -p "$d/registry" "$d/sa"
    make_ip_cert registry && make_ip_cert kubeapi || { tail -3 "$work/openssl.log"; return 1; }
    htpasswd -Bbn poller 'S3cret-pw' >"$d/htpasswd" 2>/dev/null || return 1
    rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$d/config.yml" <<CFG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $d/registry
http:
  addr: 127.0.0.1:$rport
  tls:
    certificate: $work/tls/registry.crt
    key: $work/tls/registry.key
auth:
  htpasswd:
    realm: streamdisk-e2e
    path: $d/htpasswd
CFG
    docker-registry serve "$d/config.yml" </dev/null >"$d/registry.log" 2>&1 &
    echo $! >>"$work/pids"
    local _
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$rport") 2>/dev/null && break
        sleep 0.1
    done
    local ref="127.0.0.1:$rport/os/fedora:42" digest
    "${BUILDAH[@]}" push --quiet --cert-dir "$work/certs" --creds 'poller:S3cret-pw' \
        --digestfile "$d/digest" "$CONTAINERDISK" "docker://$ref" >"$d/push.log" 2>&1 ||
        { echo "buildah push failed: $(tail -3 "$d/push.log")"; return 1; }
    digest=$(cat "$d/digest")
    # The service account as the kubelet mounts it, and the object the API stand-in serves.
    local token="e2e-service-account-token-$$"
    printf '%s' "$token" >"$d/sa/token"
    cp "$work/certs/ca.crt" "$d/sa/ca.crt"
    printf 'kubevirt-os-images' >"$d/sa/namespace"
    chmod 0755 "$d/sa" && chmod 0644 "$d/sa"/*
    local apipath=/apis/cdi.kubevirt.io/v1beta1/namespaces/kubevirt-os-images/dataimportcrons/fedora-image-cron
    printf '%s' '{"apiVersion":"cdi.kubevirt.io/v1beta1","kind":"DataImportCron","metadata":{"name":"fedora-image-cron","namespace":"kubevirt-os-images","annotations":{"cdi.kubevirt.io/storage.import.nextCronTime":"2026-12-01T12:00:00Z","cdi.kubevirt.io/storage.import.sourceDesiredDigest":"sha256:0000"}}}' >"$d/object.json"
    : >"$d/api.log"
    python3 "$here/kube_api.py" --port-file "$d/api.port" --cert "$work/tls/kubeapi.crt" \
        --key "$work/tls/kubeapi.key" --token "$token" --path "$apipath" --object "$d/object.json" \
        --log "$d/api.log" </dev/null >/dev/null 2>>"$d/api.err" &
    echo $! >>"$work/pids"
    for _ in $(seq 100); do [[ -s $d/api.port ]] && break; sleep 0.1; done
    kport=$(cat "$d/api.port" 2>/dev/null)
    [[ -n $kport ]] || { echo "the API stand-in did not start: $(tail -3 "$d/api.err")"; return 1; }

    local cname="streamdisk-e2e-poller-$$" rc i
    echo "$cname" >>"$work/containers"
    for i in 1 2; do
        "${PODMAN[@]}" run --rm --name "$cname" "${HARDENED[@]}" --network host \
            -e KUBERNETES_SERVICE_HOST=127.0.0.1 -e "KUBERNETES_SERVICE_PORT=$kport" \
            -e IMPORTER_ACCESS_KEY_ID=poller -e IMPORTER_SECRET_KEY='S3cret-pw' \
            -v "$d/sa:/var/run/secrets/kubernetes.io/serviceaccount:ro" -v "$work/certs:/certs:ro" \
            --entrypoint '["/usr/bin/cdi-source-update-poller","-ns","kubevirt-os-images","-cron","fedora-image-cron","-url","docker://'"$ref"'","-certdir","/certs"]' \
            "$IMAGE" >"$work/poller-$i.log" 2>&1
        rc=$?
        [[ $rc -eq 0 ]] || { echo "poll $i exited $rc: $(tail -3 "$work/poller-$i.log" | tr '\n' ' ')"; return 1; }
    done
    grep -q "Digest updated" "$work/poller-1.log" && grep -q "No digest update" "$work/poller-2.log" ||
        { echo "the polls did not log 'Digest updated' then 'No digest update'"; return 1; }
    # What the API stand-in accepted: GET, PATCH (time and digest), GET, PATCH (time only).
    python3 - "$d/api.log" "$digest" <<'PY' || return 1
import json, sys
reqs = [json.loads(l) for l in open(sys.argv[1])]
digest = sys.argv[2]
seq = [(r["method"], r["status"]) for r in reqs]
want = [("GET", 200), ("PATCH", 200), ("GET", 200), ("PATCH", 200)]
if seq != want:
    print(f"API requests {seq}, expected {want}")
    sys.exit(1)
t = "/metadata/annotations/cdi.kubevirt.io~1storage.import.lastCronTime"
g = "/metadata/annotations/cdi.kubevirt.io~1storage.import.sourceDesiredDigest"
first, second = reqs[1]["body"], reqs[3]["body"]
ok = ([o["path"] for o in first] == [t, g] and first[1]["value"] == digest
      and [o["path"] for o in second] == [t]
      and all(r["content_type"] == "application/json-patch+json" for r in (reqs[1], reqs[3])))
if not ok:
    print(f"patches {first} then {second}; expected the time and {digest}, then the time")
    sys.exit(1)
PY
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
if scratch_image "$CONTAINERDISK" fill_containerdisk --env KUBEVIRT_IO_OS=fedora \
        --env INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.small &&
    scratch_image localhost/streamdisk-e2e-bootc:latest fill_bootc; then
    log "containerDisk images built"
else
    log "could not build the containerDisk images"
fi
run_case node-pull-init case_node_pull_init
run_case server-help case_server_help
run_case node-pull case_node_pull
run_case bootc-refused case_bootc_refused
run_case size-detection case_size_detection
run_case poller case_poller

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
