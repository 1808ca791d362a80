# shellcheck shell=bash
# nginx on loopback for the end-to-end benchmark (sourced by run.sh).
#
# A real HTTP server with Range support (nginx serves static files with Range by default),
# started on a random free port with its whole configuration, pid file and temp paths in a
# temp dir, so that it never touches the system's nginx. Two locations:
#   /img/   the images at full speed
#   /slow/  the same files, each connection throttled with limit_rate (issue 5: object stores
#           cap throughput per connection, so N connections should be about N times faster)

NGINX_PID=""
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
    keepalive_timeout 30;
    server {
        listen 127.0.0.1:$PORT;
        location /img/ { alias $docroot/; }
        location /slow/ { alias $docroot/; limit_rate $slow_rate; }
    }
}
EOF
        if nginx -c "$dir/nginx.conf" -e "$dir/error.log" 2>>"$dir/start.log"; then
            NGINX_PID=$(cat "$dir/nginx.pid")
            log "nginx (pid $NGINX_PID) serves $docroot on http://127.0.0.1:$PORT/img/ and, throttled to $slow_rate per connection, /slow/"
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
}
