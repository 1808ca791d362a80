# shellcheck shell=bash
# nginx on loopback for the end-to-end benchmark (sourced by run.sh).
#
# A real HTTP server with Range support (nginx serves static files with Range by default),
# started on a random free port with its whole configuration, pid file and temp paths in a
# temp dir, so that it never touches the system's nginx. Two locations:
#   /img/   the images at full speed
#   /slow/  the same files, each connection throttled with limit_rate (issue 5: object stores
#           cap throughput per connection, so N connections should be about N times faster)
#
# nginx reads the images with O_DIRECT (`directio`, with `aio threads` and 2 x 4 MiB output
# buffers), as dd and qemu-img's local conversion do, and runs in a memory cgroup of its own
# limited to NGINX_MEM_MIB. Why: this VM has virtio-balloon free page reporting, so guest memory
# that has been free for a while goes back to the host, and the first touch of such a page costs
# a host fault. With sendfile, the socket carries nginx's freshly read page-cache pages, and that
# cost lands on whoever copies them out of the socket: a cold `curl URL > /dev/null` of the 3 GiB
# mixed image took 3.7-9.1 s with 2.5-8.4 s of system time in curl (perf: _copy_to_iter),
# against 2.3-2.7 s and 0.8 s with nginx held to 512 MiB of cache; but since every command
# starts with drop_caches, nginx's pages are freed and reported again before each one, and the
# first full run with sendfile still showed streamdisk at 1.7 s of system time in some rounds and
# 4.0 s in others (depending on what ran before). With directio the data crosses the socket from
# nginx's own reused buffers: curl's system time fell to 0.4-0.7 s and streamdisk's to 1.0-1.4 s
# (same machine, same hour, 2026-11-28). The cost belongs to the test server, not to the
# importer reading from it (a real image server is another machine), and it hit every HTTP peer
# alike. Reading with O_DIRECT one buffer at a time, nginx serves a cold file at about 1 GB/s
# here (dd reads it at 1.2-1.4 GB/s). The buffers are 4 MiB, the size dd reads with (`bs=4M`):
# with 1 MiB buffers a cold `curl URL > /dev/null` of the mixed image took 3.3-3.6 s, with
# 4 MiB 3.0-3.1 s (2026-11-28, same hour). The server is the fixture, not the subject: every
# HTTP peer reads from it alike.
# One exception to O_DIRECT: nginx reads a transfer shorter than one output buffer through the
# page cache (it turns O_DIRECT off for that read), so streamdisk's 2 MiB segment requests are
# served through nginx's page cache, inside its cgroup, while whole-file GETs and ranges of
# 4 MiB or more are read with O_DIRECT (strace: `fcntl(F_SETFL)` around each 2 MiB pread).
NGINX_DIRECTIO="aio threads; directio 4m; output_buffers 2 4m;"

NGINX_PID=""
NGINX_CG=""
NGINX_MEM_MIB=512
PORT=""

nginx_start() {
    local docroot=$1 slow_rate=$2 dir="$RUNTMP/nginx" try
    mkdir -p "$dir/tmp"
    for try in 1 2 3 4 5 6 7 8 9 10; do
        PORT=$((20000 + RANDOM % 40000))
        ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . && continue
        cat > "$dir/nginx.conf" <<EOF
daemon on;
user root;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    types { application/octet-stream qcow2 xz raw; }
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    $NGINX_DIRECTIO
    keepalive_timeout 30;
    server {
        listen 127.0.0.1:$PORT;
        location /img/ { alias $docroot/; }
        location /slow/ { alias $docroot/; limit_rate $slow_rate; }
    }
}
EOF
        [ -n "$NGINX_CG" ] || NGINX_CG=$(cg_fixture nginx "$NGINX_MEM_MIB")
        # The daemon and its worker inherit the cgroup of this subshell.
        if (echo "$BASHPID" > "$NGINX_CG/cgroup.procs" \
            && exec nginx -c "$dir/nginx.conf" -e "$dir/error.log") 2>>"$dir/start.log"; then
            NGINX_PID=$(cat "$dir/nginx.pid")
            log "nginx (pid $NGINX_PID, memory cgroup limited to $NGINX_MEM_MIB MiB) serves $docroot on http://127.0.0.1:$PORT/img/ and, throttled to $slow_rate per connection, /slow/"
            return 0
        fi
    done
    die "nginx did not start; see $dir/start.log"
}

nginx_stop() {
    if [ -n "$NGINX_PID" ]; then
        kill -QUIT "$NGINX_PID" 2>/dev/null
        local i
        for i in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$NGINX_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$NGINX_PID" 2>/dev/null
        NGINX_PID=""
    fi
    if [ -n "$NGINX_CG" ]; then
        local i
        for i in 1 2 3 4 5 6 7 8 9 10; do
            rmdir "$NGINX_CG" 2>/dev/null && break
            sleep 0.2
        done
        NGINX_CG=""
    fi
}

# ---------------------------------------------------------------- registry
# Debian's docker-registry (the CNCF distribution registry) on loopback, plain http, storage
# under $WORK/registry so a pushed image survives between runs. Like nginx it runs in a memory
# cgroup of its own: it is the fixture, and its page cache is not the importer's.
REGISTRY_PID=""
REGISTRY_CG=""
RPORT=""

registry_start() {
    local dir="$RUNTMP/registry" try
    mkdir -p "$dir" "$WORK/registry"
    for try in 1 2 3 4 5 6 7 8 9 10; do
        RPORT=$((20000 + RANDOM % 40000))
        ss -Hltn "sport = :$RPORT" 2>/dev/null | grep -q . && continue
        cat > "$dir/config.yml" <<CONF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$RPORT
CONF
        [ -n "$REGISTRY_CG" ] || REGISTRY_CG=$(cg_fixture registry "$NGINX_MEM_MIB")
        (echo "$BASHPID" > "$REGISTRY_CG/cgroup.procs" \
            && exec docker-registry serve "$dir/config.yml") > "$dir/registry.log" 2>&1 &
        REGISTRY_PID=$!
        local i
        for i in $(seq 1 50); do
            curl -sf "http://127.0.0.1:$RPORT/v2/" > /dev/null 2>&1 && {
                log "docker-registry (pid $REGISTRY_PID, memory cgroup limited to $NGINX_MEM_MIB MiB) on http://127.0.0.1:$RPORT"
                return 0
            }
            kill -0 "$REGISTRY_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill "$REGISTRY_PID" 2>/dev/null; REGISTRY_PID=""
    done
    die "docker-registry did not start; see $dir/registry.log"
}

registry_stop() {
    [ -n "$REGISTRY_PID" ] && { kill "$REGISTRY_PID" 2>/dev/null; wait "$REGISTRY_PID" 2>/dev/null; }
    REGISTRY_PID=""
    if [ -n "$REGISTRY_CG" ]; then
        local i
        for i in 1 2 3 4 5 6 7 8 9 10; do rmdir "$REGISTRY_CG" 2>/dev/null && break; sleep 0.2; done
        REGISTRY_CG=""
    fi
}

# registry_blob REPO FILE MEDIA: uploads FILE as a blob (monolithic PUT) unless the registry
# has it; prints its digest.
registry_blob() {
    local repo=$1 file=$2 d loc sep
    d="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
    if ! curl -sfI "http://127.0.0.1:$RPORT/v2/$repo/blobs/$d" > /dev/null; then
        loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$RPORT/v2/$repo/blobs/uploads/" \
            | awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')
        [ -n "$loc" ] || die "registry: no upload location for $repo"
        case $loc in http*) ;; *) loc="http://127.0.0.1:$RPORT$loc" ;; esac
        sep='?'; [[ $loc == *'?'* ]] && sep='&'
        curl -sf -X PUT -H "Content-Type: application/octet-stream" -T "$file" "$loc${sep}digest=$d" > /dev/null \
            || die "registry: upload of $(basename "$file") failed"
    fi
    echo "$d"
}

# registry_push_containerdisk REPO:TAG LAYER: a one-layer OCI image (the gzip layer of
# build_containerdisk_layer) with a config naming KUBEVIRT_IO_* labels as CDI's images do.
registry_push_containerdisk() {
    local ref=$1 layer=$2 repo=${1%:*} tag=${1##*:} cfg="$RUNTMP/config.json" man="$RUNTMP/manifest.json"
    local diff ld cd
    diff="sha256:$(gzip -dc "$layer" | sha256sum | cut -d' ' -f1)"
    printf '{"architecture":"amd64","os":"linux","config":{"Env":["KUBEVIRT_IO_OS=linux"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' "$diff" > "$cfg"
    ld=$(registry_blob "$repo" "$layer")
    cd=$(registry_blob "$repo" "$cfg")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
        "$cd" "$(stat -c %s "$cfg")" "$ld" "$(stat -c %s "$layer")" > "$man"
    curl -sf -X PUT -H "Content-Type: application/vnd.oci.image.manifest.v1+json" -T "$man" \
        "http://127.0.0.1:$RPORT/v2/$repo/manifests/$tag" > /dev/null || die "registry: manifest push failed"
    REGISTRY_LAYER_DIGEST=$ld
    log "pushed $ref: layer $ld ($(human "$(stat -c %s "$layer")"))"
}

# ---------------------------------------------------------------- upload
# free_port: a loopback TCP port nobody listens on.
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        ss -Hltn "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return 0; }
    done
}

# upload_certs DIR: a self-signed server certificate for 127.0.0.1 (the client skips
# verification: what is measured is the transfer, not the PKI).
upload_certs() {
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 -keyout "$1/upload.key" -out "$1/upload.crt" 2>/dev/null \
        || die "openssl could not make the upload certificate"
}
