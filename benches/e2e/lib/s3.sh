# shellcheck shell=bash
# A local S3 server for the end-to-end benchmark's s3 group (sourced by run.sh).
#
# s3s-fs (crates.io): an S3 server over a directory (buckets are its subdirectories, objects
# their files) that verifies SigV4, serves Range and ETags, and reads from disk as it sends,
# so a 4 GiB object costs no memory. moto, which the tests use, holds each object in memory and
# copies the whole object for every GET, range requests included, so it cannot serve a 4 GiB
# image at all.
#
# Stock s3s-fs has two costs that real S3 does not, and both are about the fixture, not the
# client, so the bench removes them:
# - it reads files 4 KiB at a time (ReaderStream::with_capacity(file, 4096)), which caps it at
#   about a tenth of nginx here. The bench builds it from its crates.io source with that one
#   read size changed to 1 MiB (s3_binary: the sed must match, or the build stops);
# - for an object it did not receive through PutObject it computes the ETag (an MD5 of the whole
#   file) on every request, HEAD and ranged GETs included: about 8 s per request at 4 GiB, so a
#   segmented download paid a full-file hash per 2 MiB segment. A PutObject stores the MD5 in
#   the object's internal record (`.bucket-B.object-K.internal.json`, base64url names, key
#   "e_tag"); s3_store_etag writes that record for the hard-linked image, as a PUT would.
# The first run of the group (2026-12-01) measured the stock server; docs/bench-2026-12-01-s3.
# The server's floor, a signed `curl -o /dev/null` of the object (s3-floor), is still measured.
# It is built once into $WORK/s3s-fs-r1m (about 10 minutes on 2 busy cores) and reused.
S3S_VERSION=0.14.1
S3_PID=""
S3_ETAG=""
S3_PORT=""
S3_ENDPOINT=""
S3_BUCKET=bench
S3_KEY_ID=AKIABENCHSTREAMDISK
S3_SECRET=bench-secret-not-a-real-one

s3_binary() {
    local bin=${S3S_FS:-$WORK/s3s-fs-r1m/bin/s3s-fs} src=$WORK/s3s-fs-src
    if [ ! -x "$bin" ]; then
        log "building s3s-fs $S3S_VERSION with 1 MiB reads into $WORK/s3s-fs-r1m (once)"
        rm -rf "$src" && mkdir -p "$src"
        curl -sfL "https://static.crates.io/crates/s3s-fs/s3s-fs-$S3S_VERSION.crate" \
            | tar -xz -C "$src" --strip-components=1 \
            || die "cannot download the s3s-fs $S3S_VERSION crate from crates.io"
        sed -i 's/ReaderStream::with_capacity(file, 4096)/ReaderStream::with_capacity(file, 1 << 20)/' \
            "$src/src/s3.rs"
        grep -q 'ReaderStream::with_capacity(file, 1 << 20)' "$src/src/s3.rs" \
            || die "s3s-fs $S3S_VERSION: the GetObject read size was not found to patch"
        cargo install --path "$src" --features binary --locked \
            --root "$WORK/s3s-fs-r1m" > "$WORK/s3s-fs-install.log" 2>&1 \
            || die "cargo install s3s-fs failed; see $WORK/s3s-fs-install.log"
    fi
    echo "$bin"
}

# s3_store_etag ROOT BUCKET FILE: the internal record a PutObject of FILE into BUCKET would
# have left under ROOT (its MD5 as the ETag), so GETs do not hash the whole object each time.
s3_store_etag() {
    local root=$1 bucket=$2 file=$3 md5
    md5=$(md5sum < "$file" | cut -d' ' -f1) || die "md5sum $file failed"
    S3_ETAG=$md5
    printf '{"e_tag":"%s"}' "$md5" \
        > "$root/.bucket-$(s3_b64url "$bucket").object-$(s3_b64url "${file##*/}").internal.json"
}

s3_b64url() { printf %s "$1" | base64 -w0 | tr '+/' '-_' | tr -d '='; }

# s3_check_etag KEY: the server answers a signed HEAD with the stored ETag (so it hashes nothing).
s3_check_etag() {
    local got
    got=$(curl -sfI --aws-sigv4 aws:amz:us-east-1:s3 -u "$S3_KEY_ID:$S3_SECRET" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$S3_ENDPOINT/$S3_BUCKET/$1" \
        | tr -d '\r"' | awk 'tolower($1) == "etag:" { print $2 }')
    [ "$got" = "$S3_ETAG" ] || die "s3s-fs answers ETag '$got' for $1, not the stored $S3_ETAG"
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
