# shellcheck shell=bash
# A local S3 server for the end-to-end benchmark's s3 group (sourced by run.sh).
#
# s3s-fs (crates.io): an S3 server over a directory (buckets are its subdirectories, objects
# their files) that verifies SigV4, serves Range and ETags, and reads from disk as it sends,
# so a 4 GiB object costs no memory. moto, which the tests use, holds each object in memory and
# copies the whole object for every GET, range requests included, so it cannot serve a 4 GiB
# image at all. s3s-fs has two costs of its own that real S3 does not: it reads files in small
# pieces, and it computes the ETag (an MD5 of the whole file) on every request, HEAD and ranged
# GETs included: 0.35-0.43 s per request for a 190 MiB object here (2026-12-01), whatever the
# range, so about 8 s per request at 4 GiB. That makes a segmented download (2 MiB ranges) pay
# once per segment for a full-file hash. So the group measures, besides streamdisk's default
# (streamdisk-s3, two connections that fall back to one stream when requests are slow), one
# stream (streamdisk-s3-c1, one GET), and the server's own floor, a signed `curl -o /dev/null`
# of the object (s3-floor); the report compares streamdisk with that floor and with nginx.
# It is built once into $WORK/s3s-fs (about 10 minutes on 2 busy cores) and reused.
S3S_VERSION=0.14.1
S3_PID=""
S3_PORT=""
S3_ENDPOINT=""
S3_BUCKET=bench
S3_KEY_ID=AKIABENCHSTREAMDISK
S3_SECRET=bench-secret-not-a-real-one

s3_binary() {
    local bin=${S3S_FS:-$WORK/s3s-fs/bin/s3s-fs}
    if [ ! -x "$bin" ]; then
        log "building s3s-fs $S3S_VERSION into $WORK/s3s-fs (cargo install, once)"
        cargo install s3s-fs --version "$S3S_VERSION" --features binary --locked \
            --root "$WORK/s3s-fs" > "$WORK/s3s-fs-install.log" 2>&1 \
            || die "cargo install s3s-fs failed; see $WORK/s3s-fs-install.log"
    fi
    echo "$bin"
}

# s3_start ROOT: serves ROOT (which holds the bucket directory) on a free loopback port.
s3_start() {
    local root=$1 bin try
    bin=$(s3_binary)
    for try in 1 2 3 4 5 6 7 8 9 10; do
        S3_PORT=$((20000 + RANDOM % 40000))
        ss -Hltn "sport = :$S3_PORT" 2>/dev/null | grep -q . && continue
        "$bin" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY_ID" \
            --secret-key "$S3_SECRET" "$root" > "$RUNTMP/s3s-fs.log" 2>&1 &
        S3_PID=$!
        for _ in $(seq 50); do
            curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && break
            sleep 0.1
        done
        if kill -0 "$S3_PID" 2>/dev/null; then
            S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
            export S3_ENDPOINT S3_BUCKET
            log "s3s-fs on $S3_ENDPOINT (pid $S3_PID)"
            return 0
        fi
    done
    die "s3s-fs did not start; see $RUNTMP/s3s-fs.log"
}

s3_stop() {
    [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null && wait "$S3_PID" 2>/dev/null
    S3_PID=""
    return 0
}
