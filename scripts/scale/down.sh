#!/usr/bin/env bash
# Tear down what scripts/scale/up.sh set up: every process it started (pid files; anything left in the namespace),
# the namespace host's Grid Engine objects (its jobs, scale.q, the exec/admin/submit host, the complex), the
# namespace and its veth pair (its /etc/hosts line stays: see remove_network). Data stays ($STATE, the two
# databases: MariaDB $STATE_DB, PostgreSQL cluster jobmon_scale) unless --purge.
# Idempotent: with nothing up it only checks.
set -euo pipefail
# shellcheck source=scripts/scale/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
((EUID == 0)) || die "run as root"
PURGE=0
[[ ${1:-} == --purge ]] && PURGE=1

stop_processes() {
    local name
    # Workers first (a warm shutdown lets a running task finish its step), then the rest.
    for name in worker-1 worker-2 triggerer-1 triggerer-2 scheduler dag-processor api-server prometheus \
        statsd-bridge replica-1 replica-2 redis; do
        stop_service "$name" 30
    done
    local pid
    if pid=$(live_pid nginx); then
        kill -QUIT "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while [[ -e /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.25; done
        kill -KILL "$pid" 2>/dev/null || true
        log "nginx: stopped (pid $pid)"
    fi
    rm -f "$RUN/nginx.pid"
    if [[ -n $PG_VERSION ]] && pg_lsclusters -h "$PG_VERSION" "$PG_CLUSTER" 2>/dev/null | awk '{exit $4 != "online"}'; then
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast >/dev/null 2>&1 || die "PostgreSQL $PG_CLUSTER did not stop"
        log "postgresql: $PG_VERSION/$PG_CLUSTER stopped"
    fi
}

remove_sge() {
    command -v qconf >/dev/null || return 0
    local ids
    # Only jobs of scale.q (the FORCED complex kept everyone else's jobs out of it).
    ids=$(qstat -u '*' -q "$SCALE_QUEUE" 2>/dev/null | awk 'NR > 2 {print $1}' | sort -u | tr '\n' ' ') || true
    ids+=" $(qstat -u '*' -s p -l "$SCALE_COMPLEX=TRUE" 2>/dev/null | awk 'NR > 2 {print $1}' | sort -u | tr '\n' ' ')" || true
    if [[ -n ${ids// /} ]]; then
        # shellcheck disable=SC2086 # a list of numeric job ids
        qdel -f $ids >/dev/null 2>&1 || true
        log "sge: deleted scale jobs $ids"
        local deadline=$((SECONDS + 60)) # a queue with jobs in it cannot be deleted
        while [[ -n $(qstat -u '*' -q "$SCALE_QUEUE" 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 1; done
    fi
    if qconf -sq "$SCALE_QUEUE" >/dev/null 2>&1; then
        qconf -dq "$SCALE_QUEUE" >/dev/null 2>&1 || die "qconf -dq $SCALE_QUEUE failed"
        log "sge: queue $SCALE_QUEUE removed"
    fi
    if [[ -r /var/spool/gridengine/execd/$NS_HOST/execd.pid ]]; then
        qconf -ke "$NS_HOST" >/dev/null 2>&1 || true
    fi
    if qconf -se "$NS_HOST" >/dev/null 2>&1; then
        qconf -de "$NS_HOST" >/dev/null 2>&1 || true
        log "sge: exec host $NS_HOST removed"
    fi
    qconf -ss 2>/dev/null | grep -cxF "$NS_HOST" >/dev/null && qconf -ds "$NS_HOST" >/dev/null 2>&1
    qconf -sh 2>/dev/null | grep -cxF "$NS_HOST" >/dev/null && qconf -dh "$NS_HOST" >/dev/null 2>&1
    if qconf -sc 2>/dev/null | grep -c "^$SCALE_COMPLEX " >/dev/null; then
        qconf -sc | grep -v '^#' | grep -v "^$SCALE_COMPLEX " >"$STATE/complex.without" 2>/dev/null &&
            qconf -Mc "$STATE/complex.without" >/dev/null 2>&1 || true
        rm -f "$STATE/complex.without"
        qconf -sc | grep -c "^$SCALE_COMPLEX " >/dev/null && log "sge: complex $SCALE_COMPLEX still referenced; left" ||
            log "sge: complex $SCALE_COMPLEX removed"
    fi
    return 0
}

remove_network() {
    if ns_exists; then
        local pids
        # Whatever still runs in the namespace was started there by up.sh (execd's jobs, a stray worker child).
        pids=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ')
        if [[ -n ${pids// /} ]]; then
            # shellcheck disable=SC2086
            kill -TERM $pids 2>/dev/null || true
            sleep 2
            pids=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ')
            # shellcheck disable=SC2086
            [[ -z ${pids// /} ]] || kill -KILL $pids 2>/dev/null || true
            log "network: ended processes left in $NS"
        fi
        ip netns del "$NS"
        log "network: namespace $NS removed (with its veth pair)"
    fi
    # Deleting the namespace takes its veth pair with it, asynchronously: the host end may vanish meanwhile.
    if ip link show "$VETH_HOST" >/dev/null 2>&1; then ip link del "$VETH_HOST" 2>/dev/null || true; fi
    # The /etc/hosts line of the namespace host stays: the qmaster caches host name lookups, failures too, so a
    # name it knew that stops resolving keeps failing (qconf -ah: "can't resolve hostname") for minutes after the
    # line is back. A line naming an address no interface has any more is harmless.
    return 0
}

purge() {
    mariadb -e "DROP DATABASE IF EXISTS \`$STATE_DB\`; DROP DATABASE IF EXISTS \`$AIRFLOW_DB\`;" 2>/dev/null || true
    if [[ -n $PG_VERSION ]] && pg_lsclusters -h "$PG_VERSION" "$PG_CLUSTER" >/dev/null 2>&1; then
        pg_dropcluster --stop "$PG_VERSION" "$PG_CLUSTER" >/dev/null 2>&1 || die "pg_dropcluster $PG_CLUSTER failed"
    fi
    [[ -z $PG_VERSION ]] || rm -rf "/etc/postgresql/$PG_VERSION/$PG_CLUSTER" # our conf.d file, left by pg_dropcluster
    rm -rf "$STATE"
    log "purged $STATE, MariaDB database $STATE_DB and PostgreSQL cluster $PG_CLUSTER"
}

mkdir -p "$RUN"
stop_processes
remove_sge
remove_network
((PURGE)) && purge
log "down"
