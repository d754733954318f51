# Shared by scripts/scale/up.sh and down.sh (sourced, not run). Names, addresses and helpers of the scale-out set-up.
# shellcheck shell=bash

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV_BIN=$REPO/.venv/bin

# The second execution host: a network namespace with its own UTS namespace (host name) and a veth pair.
NS=jobmon-exec2
NS_HOST=jobmon-exec2
VETH_HOST=jmx2-host # host side, 10.231.0.1: every service the namespace needs listens here
VETH_NS=jmx2-ns     # namespace side, 10.231.0.2
HOST_IP=10.231.0.1
NS_IP=10.231.0.2
PREFIX=24
HOSTS_TAG="# jobmon-scale"

# Grid Engine: the scale queue spans both hosts; a FORCED boolean complex keeps every job that does not ask for
# it (all the single-host tests) out of the queue, so nothing else ever lands on the namespace host.
SCALE_QUEUE=scale.q
SCALE_COMPLEX=jobmon_scale
SCALE_SLOTS=4

# Everything the set-up keeps: configuration, secrets, pid files, logs, the two homes, metrics, Prometheus data.
STATE=${JOBMON_SCALE_STATE:-/var/lib/jobmon-scale}
RUN=$STATE/run
LOGS=$STATE/logs
ENV_FILE=$STATE/scale.env

# Ports. nginx (HTTP: the State Manager replicas; stream: MariaDB for the namespace), Redis and Airflow's API
# server listen on the veth address; the replicas and Prometheus on loopback only.
NGINX_PORT=8790
MARIADB_PROXY_PORT=3306
REDIS_PORT=6379
AIRFLOW_PORT=18280
PROMETHEUS_PORT=19090
STATSD_PORT=18125        # Airflow's StatsD metrics (UDP, veth address) into the bridge of jobmon_airflow.telemetry,
STATSD_BRIDGE_PORT=19102 # which Prometheus scrapes on loopback
REPLICA_PORTS=(18791 18792)
STATE_MANAGER_URL=http://$HOST_IP:$NGINX_PORT/jobmon
STATE_DB=jobmon_scale
AIRFLOW_DB=jobmon_scale_airflow
# Airflow's metadata database: a PostgreSQL cluster of its own (Debian's postgresql-common), on loopback and the
# veth address; the Jobmon state database stays on MariaDB.
PG_VERSION=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
PG_CLUSTER=jobmon_scale
PG_PORT=5433
DB_USER=jobmon DB_PASSWORD=jobmon # the user setup_services.sh creates

LOG_NAME=scale
# shellcheck source=scripts/shell_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../shell_lib.sh"

# The pid in $RUN/<name>.pid when it names a live, non-zombie process; empty otherwise.
live_pid() {
    local file=$RUN/$1.pid pid
    [[ -r $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null || return 1
    printf '%s\n' "$pid"
}

# Stop one service started by up.sh: TERM its process group, KILL it after $2 seconds (default 20).
stop_service() {
    local name=$1 timeout=${2:-20} pid
    if ! pid=$(live_pid "$name"); then
        rm -f "$RUN/$name.pid"
        return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while [[ -e /proc/$pid ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.25
    done
    rm -f "$RUN/$name.pid"
    log "$name: stopped (pid $pid)"
}

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -cxF "$NS" >/dev/null; }
