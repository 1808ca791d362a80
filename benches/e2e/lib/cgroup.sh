# shellcheck shell=bash
# Memory-cgroup runner for the end-to-end benchmark (sourced by run.sh).
#
# Every measured command runs in a fresh memory cgroup of its own, because a pod's memory limit
# is a cgroup limit and it charges page cache as well as anonymous memory: that is the number
# that decides whether an importer gets OOM-killed, so it is the number we report.
#
# Both cgroup v1 (memory controller mounted on its own hierarchy, as on this machine) and
# cgroup v2 (unified hierarchy) are handled; the mode is detected at run time by cg_init.
#
#   v1: limit memory.limit_in_bytes, usage memory.usage_in_bytes,
#       peak memory.max_usage_in_bytes, limit hits memory.failcnt,
#       OOM kills from memory.oom_control (oom_kill N)
#   v2: limit memory.max, usage memory.current, peak memory.peak,
#       limit hits and OOM kills from memory.events (max N, oom_kill N)

CG_MODE=""      # v1 | v2
CG_PARENT=""    # directory under which the per-run cgroups are made
CG_SEQ=0

# Find the memory controller and a parent directory where we may create child cgroups.
cg_init() {
    local v1mnt v1path v2mnt v2path cand
    v1mnt=$(awk '$3=="cgroup" && $4 ~ /(^|,)memory(,|$)/ {print $2; exit}' /proc/mounts)
    v1path=$(awk -F: '$2=="memory" {print $3; exit}' /proc/self/cgroup)
    if [ -n "$v1mnt" ] && [ -n "$v1path" ]; then
        CG_MODE=v1
        CG_PARENT="$v1mnt$v1path"
        [ -d "$CG_PARENT" ] || CG_PARENT="$v1mnt"
        [ -w "$CG_PARENT" ] || die "cgroup v1 memory hierarchy $CG_PARENT is not writable (run as root)"
        return 0
    fi
    v2mnt=$(awk '$3=="cgroup2" {print $2; exit}' /proc/mounts)
    [ -n "$v2mnt" ] || die "no memory cgroup found: neither a cgroup v1 memory hierarchy nor cgroup v2 is mounted"
    grep -qw memory "$v2mnt/cgroup.controllers" 2>/dev/null \
        || die "cgroup v2 at $v2mnt does not offer the memory controller (it may be bound to a v1 hierarchy)"
    v2path=$(awk -F: '$1=="0" {print $3; exit}' /proc/self/cgroup)
    CG_MODE=v2
    # A v2 cgroup can only hand the memory controller to children through its
    # cgroup.subtree_control, and (no-internal-process rule) a non-root cgroup that holds
    # processes cannot enable it. Our own cgroup first, then the root, which is exempt.
    for cand in "$v2mnt${v2path%/}" "$v2mnt"; do
        [ -d "$cand" ] || continue
        if grep -qw memory "$cand/cgroup.subtree_control" 2>/dev/null \
            || { echo +memory > "$cand/cgroup.subtree_control"; } 2>/dev/null; then
            CG_PARENT="$cand"
            return 0
        fi
    done
    die "cgroup v2: cannot enable the memory controller for child cgroups under $v2mnt$v2path or $v2mnt"
}

cg_describe() {
    echo "cgroup $CG_MODE, runs created under $CG_PARENT"
}

# Kill every process in cgroup $1 (only processes this benchmark started are in it).
cg_kill_all() {
    local pid
    while read -r pid; do
        [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    done < "$1/cgroup.procs"
}

# cg_fixture NAME LIMIT_MIB: makes a long-lived cgroup for a test fixture (the HTTP server),
# prints its path. Processes are put in it with `echo PID > PATH/cgroup.procs`.
cg_fixture() {
    local cg="$CG_PARENT/streamdisk-bench-$$-$1"
    mkdir -p "$cg" || die "cannot create cgroup $cg"
    if [ "$CG_MODE" = v1 ]; then
        echo $(($2 * 1048576)) > "$cg/memory.limit_in_bytes"
    else
        echo $(($2 * 1048576)) > "$cg/memory.max"
    fi
    echo "$cg"
}

# cg_run LIMIT_MIB NAME SAMPLES_CSV LOG TIMEOUT_S -- CMD...
# LIMIT_MIB 0 means no limit. Drops the page cache, runs CMD in a new memory cgroup, samples
# its memory usage every ~50 ms into SAMPLES_CSV ("epoch_s,bytes"), and sets:
#   R_RC R_WALL R_USER R_SYS R_PEAK R_FAILCNT R_OOM R_T0 R_NOTE
# A disk guard kills the command when free space under $WORK falls below $DISK_RESERVE_BYTES,
# so a broken zeroing path can never fill the shared disk.
cg_run() {
    local limit=$1 samples=$3 log=$4 timeout=$5  # $2: a name for the caller's logs
    shift 6
    CG_SEQ=$((CG_SEQ + 1))
    local cg="$CG_PARENT/streamdisk-bench-$$-$CG_SEQ"
    local usage_f peak_f tf flag stop
    mkdir "$cg" || die "cannot create cgroup $cg"
    if [ "$CG_MODE" = v1 ]; then
        usage_f=memory.usage_in_bytes; peak_f=memory.max_usage_in_bytes
        [ "$limit" -gt 0 ] && echo $((limit * 1048576)) > "$cg/memory.limit_in_bytes"
    else
        usage_f=memory.current; peak_f=memory.peak
        [ "$limit" -gt 0 ] && echo $((limit * 1048576)) > "$cg/memory.max"
        echo 0 > "$cg/memory.swap.max" 2>/dev/null || true
    fi
    tf=$(mktemp); flag=$(mktemp); stop=$(mktemp -u)
    : > "$flag"

    sync; echo 1 > /proc/sys/vm/drop_caches

    local t0 t1
    t0=$EPOCHREALTIME
    # Sampler + watchdog. It reads cgroup files with bash builtins only (no fork per sample).
    (
        exec > "$samples"
        echo "epoch_s,bytes"
        local v n=0 max=0 start=${t0%.*}
        while [ ! -e "$stop" ]; do
            read -r v < "$cg/$usage_f" 2>/dev/null || break
            echo "$EPOCHREALTIME,$v"
            [ "$v" -gt "$max" ] && max=$v
            n=$((n + 1))
            if [ $((n % 20)) -eq 0 ]; then
                local now=${EPOCHREALTIME%.*} avail
                if [ $((now - start)) -gt "$timeout" ]; then
                    echo "timeout after ${timeout}s" > "$flag"; cg_kill_all "$cg"
                fi
                avail=$(df --output=avail -B1 "$WORK" 2>/dev/null | tail -n1)
                if [ -n "$avail" ] && [ "$avail" -lt "$DISK_RESERVE_BYTES" ]; then
                    echo "killed by disk guard: free space fell to $((avail / 1048576)) MiB" > "$flag"
                    cg_kill_all "$cg"
                fi
            fi
            sleep 0.05
        done
        echo "$max" > "$samples.max"
    ) &
    local sampler=$!

    # The inner shell moves itself into the cgroup, then becomes the command.
    # shellcheck disable=SC2016
    /usr/bin/time -f "%U %S" -o "$tf" \
        sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" "$@" > "$log" 2>&1
    R_RC=$?
    t1=$EPOCHREALTIME
    : > "$stop"
    R_T0=$t0
    R_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}')
    read -r R_USER R_SYS < <(tail -n1 "$tf")
    case "$R_USER" in ''|*[!0-9.]*) R_USER=0; R_SYS=0 ;; esac

    # Anything the command left behind (it should leave nothing) is ours to end.
    cg_kill_all "$cg"
    R_PEAK=$(cat "$cg/$peak_f" 2>/dev/null || echo "")
    if [ "$CG_MODE" = v1 ]; then
        R_FAILCNT=$(cat "$cg/memory.failcnt")
        R_OOM=$(awk '$1=="oom_kill"{print $2}' "$cg/memory.oom_control")
        echo 1 > "$cg/memory.force_empty" 2>/dev/null || true
    else
        R_FAILCNT=$(awk '$1=="max"{print $2}' "$cg/memory.events")
        R_OOM=$(awk '$1=="oom_kill"{print $2}' "$cg/memory.events")
    fi
    R_OOM=${R_OOM:-0}
    wait "$sampler" 2>/dev/null
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        rmdir "$cg" 2>/dev/null && break
        sleep 0.2
    done
    # memory.peak is missing on v2 kernels before 5.19: fall back to the sampled maximum.
    if [ -z "$R_PEAK" ]; then
        R_PEAK=$(cat "$samples.max" 2>/dev/null || echo 0)
    fi
    rm -f "$samples.max"
    R_NOTE=$(cat "$flag")
    rm -f "$tf" "$flag" "$stop"
}
