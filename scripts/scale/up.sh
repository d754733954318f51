#!/usr/bin/env bash
# Scale-out set-up on one Debian 12 machine, as root, without systemd (issue 13), on top of scripts/setup_services.sh
# (Grid Engine qmaster + execd, MariaDB):
#   * a second Grid Engine execution host: network namespace jobmon-exec2 with its own host name (UTS namespace) and
#     address (veth 10.231.0.1 <-> 10.231.0.2), /etc/hosts entries, its own sge_execd, in queue scale.q (both
#     hosts; a FORCED complex keeps every other job out of it);
#   * PostgreSQL (cluster 15/jobmon_scale, port 5433) for Airflow's metadata database;
#   * two State Manager replicas (jobmon-airflow server) on MariaDB behind nginx (10.231.0.1:8790), nginx also
#     forwarding MariaDB to the namespace (stream, 10.231.0.1:3306);
#   * Airflow with the CeleryExecutor: Redis (broker and results), API server, scheduler, DAG processor, two triggerers and
#     two Celery workers, one of them inside the namespace;
#   * Prometheus (127.0.0.1:19090) scraping the metrics of every process of the set-up (prometheus_client's
#     multiprocess directory, served by whichever replica nginx picks; bearer token), and Airflow's own StatsD
#     metrics through the bridge in jobmon_airflow.telemetry (UDP 10.231.0.1:18125 in, 127.0.0.1:19102 out).
# Idempotent: a re-run with everything up only checks. Environment for clients: $STATE/scale.env (0600).
# Variables: JOBMON_SCALE_STATE (default /var/lib/jobmon-scale), JOBMON_SCALE_DAGS_FOLDER (default $STATE/dags).
set -euo pipefail
# shellcheck source=scripts/scale/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
START=$SECONDS

((EUID == 0)) || die "run as root (network namespaces, Grid Engine configuration, daemons)"
command -v qconf >/dev/null || die "Grid Engine missing: run scripts/setup_services.sh first"
qstat -f >/dev/null 2>&1 || die "qstat -f fails: run scripts/setup_services.sh first"
mariadb-admin ping >/dev/null 2>&1 || die "MariaDB does not answer: run scripts/setup_services.sh first"
[[ -x $VENV_BIN/airflow ]] || die "no $VENV_BIN/airflow: run scripts/bootstrap.sh first"
MAIN_HOST=$(hostname)

# ---------------------------------------------------------------------------------------------------------------
# Packages (the same list setup_services.sh installs in its apt run)

install_packages() {
    local pkgs=() pkg missing=()
    while read -r pkg; do [[ -n $pkg && $pkg != \#* ]] && pkgs+=("$pkg"); done <"$REPO/scripts/services/scale.packages"
    for pkg in "${pkgs[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "packages: ${#pkgs[@]} installed"
        return
    fi
    local created=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then # keep postinst from starting the daemons
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$LOGS/apt.log" 2>&1 ||
        { ((created)) && rm -f /usr/sbin/policy-rc.d; die "apt-get install ${missing[*]} failed (see $LOGS/apt.log)"; }
    ((created)) && rm -f /usr/sbin/policy-rc.d
    log "packages: installed ${missing[*]}"
}

# ---------------------------------------------------------------------------------------------------------------
# Files and secrets

prepare_state() {
    umask 077
    mkdir -p "$STATE" "$RUN" "$LOGS" "$STATE/nginx" "$STATE/redis" "$STATE/prometheus" "$STATE/metrics" \
        "$STATE/airflow" "$STATE/jobmon/logs" "${JOBMON_SCALE_DAGS_FOLDER:-$STATE/dags}"
    chmod 700 "$STATE"
    local name
    for name in redis.password metrics.token jwt.secret; do
        [[ -s $STATE/$name ]] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/$name"
        chmod 600 "$STATE/$name"
    done
    # The metrics of dead processes stay in the multiprocess directory until the next fresh start.
    if ! live_pid replica-1 >/dev/null && ! live_pid scheduler >/dev/null; then
        find "$STATE/metrics" -name '*.db' -delete
    fi
    write_env
}

write_env() {
    local redis_pw dags broker
    redis_pw=$(<"$STATE/redis.password")
    dags=${JOBMON_SCALE_DAGS_FOLDER:-$STATE/dags}
    broker="redis://:$redis_pw@$HOST_IP:$REDIS_PORT"
    local sge_extra
    sge_extra=$(printf '{"sge_root": "%s", "sge_cell": "%s", "queue": "%s", "extra_resources": {"%s": "TRUE"}, "log_dir": "%s", "poll_interval": 2}' \
        "$SGE_ROOT" "$SGE_CELL" "$SCALE_QUEUE" "$SCALE_COMPLEX" "$STATE/jobmon/logs")
    local jobmon_conn
    jobmon_conn=$(printf '{"conn_type": "jobmon", "host": "%s", "port": %s, "login": "%s", "password": "%s", "schema": "%s", "extra": {"state_manager_url": "%s", "cluster": "gridengine"}}' \
        "$HOST_IP" "$MARIADB_PROXY_PORT" "$DB_USER" "$DB_PASSWORD" "$STATE_DB" "$STATE_MANAGER_URL")
    cat >"$ENV_FILE.new" <<EOF
# Written by scripts/scale/up.sh: the environment of every process of the scale-out set-up (and of its clients).
SGE_ROOT=$SGE_ROOT
SGE_CELL=$SGE_CELL
PATH=$VENV_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
AIRFLOW_HOME=$STATE/airflow
JOBMON_AIRFLOW_HOME=$STATE/jobmon
JOBMON_AIRFLOW_STATE_MANAGER_URL=$STATE_MANAGER_URL
JOBMON_AIRFLOW_METRICS_TOKEN_FILE=$STATE/metrics.token
PROMETHEUS_MULTIPROC_DIR=$STATE/metrics
AIRFLOW__CORE__EXECUTOR=CeleryExecutor
AIRFLOW__CORE__DAGS_FOLDER=$dags
AIRFLOW__CORE__LOAD_EXAMPLES=False
AIRFLOW__CORE__PARALLELISM=16
AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://$HOST_IP:$AIRFLOW_PORT/execution/
AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://$DB_USER:$DB_PASSWORD@$HOST_IP:$PG_PORT/$AIRFLOW_DB
AIRFLOW__API__HOST=$HOST_IP
AIRFLOW__API__PORT=$AIRFLOW_PORT
AIRFLOW__API__BASE_URL=http://$HOST_IP:$AIRFLOW_PORT
AIRFLOW__API_AUTH__JWT_SECRET=$(<"$STATE/jwt.secret")
AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC=1
AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=60
AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD=15
AIRFLOW__CELERY__BROKER_URL=$broker/0
AIRFLOW__CELERY__RESULT_BACKEND=$broker/1
AIRFLOW__CELERY__WORKER_CONCURRENCY=4
AIRFLOW__CELERY__WORKER_ENABLE_REMOTE_CONTROL=True
AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=18793
AIRFLOW__METRICS__STATSD_ON=True
AIRFLOW__METRICS__STATSD_HOST=$HOST_IP
AIRFLOW__METRICS__STATSD_PORT=$STATSD_PORT
AIRFLOW__METRICS__STATSD_PREFIX=airflow
AIRFLOW_CONN_JOBMON_DEFAULT=$jobmon_conn
AIRFLOW_CONN_GRIDENGINE_DEFAULT={"conn_type": "gridengine", "extra": $sge_extra}
EOF
    # Values single-quoted (none holds a quote): the file is sourced by bash and read by shlex (tests).
    sed -i -E "/^[A-Z_0-9]+=/ s/^([A-Z_0-9]+)=(.*)$/\\1='\\2'/" "$ENV_FILE.new"
    chmod 600 "$ENV_FILE.new"
    mv "$ENV_FILE.new" "$ENV_FILE"
    set -a
    # shellcheck source=/dev/null
    . "$ENV_FILE"
    set +a
}

# ---------------------------------------------------------------------------------------------------------------
# Network: the namespace, its veth pair and its address; both host names in /etc/hosts

setup_network() {
    local what=()
    if ! ns_exists; then
        ip netns add "$NS"
        what+=("namespace")
    fi
    if ! ip link show "$VETH_HOST" >/dev/null 2>&1; then
        ip link add "$VETH_HOST" type veth peer name "$VETH_NS" netns "$NS"
        what+=("veth")
    fi
    ip addr show dev "$VETH_HOST" | grep -cF "inet $HOST_IP/$PREFIX" >/dev/null || ip addr add "$HOST_IP/$PREFIX" dev "$VETH_HOST"
    ip link set "$VETH_HOST" up
    ip -n "$NS" link set lo up
    ip -n "$NS" addr show dev "$VETH_NS" | grep -cF "inet $NS_IP/$PREFIX" >/dev/null ||
        ip -n "$NS" addr add "$NS_IP/$PREFIX" dev "$VETH_NS"
    ip -n "$NS" link set "$VETH_NS" up
    # The qmaster's own address is this machine's: reached through the host end, delivered locally (no forwarding).
    ip -n "$NS" route replace default via "$HOST_IP" dev "$VETH_NS"
    # Name resolution both ways (Grid Engine needs name -> address -> name). setup_services.sh keeps these lines.
    if ! grep -qxF "$NS_IP $NS_HOST $HOSTS_TAG" /etc/hosts; then
        grep -vF "$HOSTS_TAG" /etc/hosts >"$STATE/hosts.new" || true
        printf '%s %s %s\n' "$NS_IP" "$NS_HOST" "$HOSTS_TAG" >>"$STATE/hosts.new"
        cat "$STATE/hosts.new" >/etc/hosts # in place: in containers /etc/hosts is a bind mount
        rm -f "$STATE/hosts.new"
        what+=("/etc/hosts")
    fi
    [[ $(getent hosts "$NS_HOST" | awk '{print $1; exit}') == "$NS_IP" ]] || die "getent hosts $NS_HOST is not $NS_IP"
    local qmaster_port
    qmaster_port=$(getent services sge_qmaster | awk '{split($2, a, "/"); print a[1]}')
    in_ns timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$MAIN_HOST" "${qmaster_port:-6444}" ||
        die "the namespace cannot reach the qmaster at $MAIN_HOST:${qmaster_port:-6444}"
    log "network: namespace $NS ($NS_HOST, $NS_IP) <-> $HOST_IP${what:+ (created: ${what[*]})}"
}

# Run a command inside the namespace with the namespace host's name (a UTS namespace of its own).
in_ns() {
    ip netns exec "$NS" unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$NS_HOST" "$@"
}

# ---------------------------------------------------------------------------------------------------------------
# Services run here: start <name> [ns] -- command...; pid file $RUN/<name>.pid, log $LOGS/<name>.log

start() {
    local name=$1 where=$2
    shift 3
    local pid
    if pid=$(live_pid "$name"); then
        log "$name: running (pid $pid)"
        return
    fi
    if [[ $where == ns ]]; then
        setsid ip netns exec "$NS" unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$NS_HOST" "$@" \
            >>"$LOGS/$name.log" 2>&1 </dev/null &
    else
        setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    fi
    echo $! >"$RUN/$name.pid"
    log "$name: started (pid $!${where:+, $where})"
}

# ---------------------------------------------------------------------------------------------------------------
# Databases: the state database on MariaDB; Airflow's metadata database on PostgreSQL (Airflow supports PostgreSQL
# and MySQL, not MariaDB; psycopg2 comes with the `scale` extra). Two triggerers need row locks (SELECT ... FOR
# UPDATE SKIP LOCKED) to share triggers, which SQLite lacks.

setup_databases() {
    local sql="" host
    sql+="CREATE DATABASE IF NOT EXISTS \`$STATE_DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"
    for host in localhost 127.0.0.1; do sql+="GRANT ALL PRIVILEGES ON \`$STATE_DB\`.* TO '$DB_USER'@'$host';"; done
    mariadb -e "$sql FLUSH PRIVILEGES;"
    log "mariadb: database $STATE_DB (Jobmon) ready"
}

pg_running() { pg_lsclusters -h "$PG_VERSION" "$PG_CLUSTER" 2>/dev/null | awk '{exit $4 != "online"}'; }
psql_pg() { runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtA "$@"; }

setup_postgres() {
    [[ -n $PG_VERSION ]] || die "PostgreSQL missing (package postgresql)"
    local etc=/etc/postgresql/$PG_VERSION/$PG_CLUSTER what=()
    if ! pg_lsclusters -h "$PG_VERSION" "$PG_CLUSTER" >/dev/null 2>&1; then
        rm -rf "$etc" # what an earlier pg_dropcluster left (our conf.d file)
        pg_createcluster "$PG_VERSION" "$PG_CLUSTER" --port "$PG_PORT" >>"$LOGS/postgres.log" 2>&1 ||
            die "pg_createcluster $PG_VERSION $PG_CLUSTER failed (see $LOGS/postgres.log)"
        what+=("cluster")
    fi
    local conf="listen_addresses = '127.0.0.1,$HOST_IP'"$'\n'"max_connections = 200"
    if [[ $(cat "$etc/conf.d/jobmon-scale.conf" 2>/dev/null) != "$conf" ]]; then
        printf '%s\n' "$conf" >"$etc/conf.d/jobmon-scale.conf"
        what+=("configuration")
    fi
    chown postgres:postgres "$etc/conf.d/jobmon-scale.conf" # read by the server, which runs as postgres
    local hba="host $AIRFLOW_DB $DB_USER $HOST_IP/$PREFIX scram-sha-256"
    grep -qxF "$hba" "$etc/pg_hba.conf" || { printf '%s\n' "$hba" >>"$etc/pg_hba.conf" && what+=("pg_hba"); }
    if pg_running && ((${#what[@]})); then
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart >>"$LOGS/postgres.log" 2>&1 || die "PostgreSQL restart failed"
    elif ! pg_running; then # started here (no systemd): pg_ctlcluster runs pg_ctl as the cluster's owner
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >>"$LOGS/postgres.log" 2>&1 ||
            die "PostgreSQL $PG_VERSION/$PG_CLUSTER did not start (see $LOGS/postgres.log)"
        what+=("started")
    fi
    wait_for 60 "PostgreSQL on $HOST_IP:$PG_PORT" pg_isready -q -h "$HOST_IP" -p "$PG_PORT"
    if [[ -z $(psql_pg -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'") ]]; then
        psql_pg <<<"CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD'" # on stdin: no password in ps
        what+=("role")
    fi
    if [[ -z $(psql_pg -c "SELECT 1 FROM pg_database WHERE datname = '$AIRFLOW_DB'") ]]; then
        psql_pg -c "CREATE DATABASE $AIRFLOW_DB OWNER $DB_USER"
        what+=("database")
    fi
    log "postgresql: $PG_VERSION/$PG_CLUSTER on $HOST_IP:$PG_PORT, database $AIRFLOW_DB${what:+ (${what[*]})}"
}

# ---------------------------------------------------------------------------------------------------------------
# nginx: HTTP load balancing over the replicas, TCP forwarding of MariaDB to the namespace

write_nginx_conf() {
    local upstreams="" port
    for port in "${REPLICA_PORTS[@]}"; do upstreams+="        server 127.0.0.1:$port max_fails=1 fail_timeout=3s;"$'\n'; done
    cat <<EOF
# Written by scripts/scale/up.sh.
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
pid $RUN/nginx.pid;
error_log $LOGS/nginx-error.log warn;
worker_processes 2;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $STATE/nginx/body;
    proxy_temp_path $STATE/nginx/proxy;
    fastcgi_temp_path $STATE/nginx/fastcgi;
    uwsgi_temp_path $STATE/nginx/uwsgi;
    scgi_temp_path $STATE/nginx/scgi;
    upstream state_manager {
$upstreams        keepalive 32;
    }
    server {
        listen $HOST_IP:$NGINX_PORT;
        location /jobmon/ {
            proxy_pass http://state_manager;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            client_max_body_size 256k;
            # A replica that is down refuses the connection: the request goes to the other one (nothing was sent).
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
        }
        location / { return 404; }
    }
}
stream {
    server {
        listen $HOST_IP:$MARIADB_PROXY_PORT;
        proxy_pass 127.0.0.1:3306;
    }
}
EOF
}

start_nginx() {
    write_nginx_conf >"$STATE/nginx.conf.new"
    local changed=0
    cmp -s "$STATE/nginx.conf.new" "$STATE/nginx.conf" || changed=1
    mv "$STATE/nginx.conf.new" "$STATE/nginx.conf"
    nginx -t -c "$STATE/nginx.conf" >"$LOGS/nginx-test.log" 2>&1 || die "nginx -t failed (see $LOGS/nginx-test.log)"
    local pid
    if pid=$(live_pid nginx); then
        if ((changed)); then
            kill -HUP "$pid"
            log "nginx: configuration reloaded (pid $pid)"
        else
            log "nginx: running (pid $pid)"
        fi
        return
    fi
    nginx -c "$STATE/nginx.conf" # daemonises; writes $RUN/nginx.pid
    wait_for 10 "nginx pid file" live_pid nginx
    log "nginx: started on $HOST_IP:$NGINX_PORT (State Manager) and $HOST_IP:$MARIADB_PROXY_PORT (MariaDB)"
}

start_redis() {
    cat >"$STATE/redis.conf" <<EOF
bind $HOST_IP
port $REDIS_PORT
protected-mode yes
requirepass $(<"$STATE/redis.password")
dir $STATE/redis
save ""
appendonly no
EOF
    chmod 600 "$STATE/redis.conf"
    start redis "" -- /usr/bin/redis-server "$STATE/redis.conf"
    wait_for 20 "redis on $HOST_IP:$REDIS_PORT" bash -c "exec 3<>/dev/tcp/$HOST_IP/$REDIS_PORT"
}

# ---------------------------------------------------------------------------------------------------------------
# Grid Engine: the complex, the exec host, the queue, the namespace's execd

# qconf on the namespace host's name, retried while the qmaster says it cannot resolve it: the qmaster caches
# lookups, failed ones too (a moment when /etc/hosts lacked the line, e.g. while a script rewrote it), for a minute
# or two.
qconf_host() {
    local deadline=$((SECONDS + 240)) out
    until out=$(qconf "$@" 2>&1); do
        if [[ $out != *"can't resolve"* ]] || ((SECONDS >= deadline)); then
            printf '%s\n' "$out" >>"$LOGS/sge.log"
            return 1
        fi
        sleep 5
    done
    printf '%s\n' "$out" >>"$LOGS/sge.log"
}

setup_sge() {
    local work=$STATE/sge
    mkdir -p "$work"
    if ! qconf -sc | awk -v c="$SCALE_COMPLEX" '$1 == c {found = 1} END {exit !found}'; then
        # name shortcut type relop requestable consumable default urgency: only jobs that ask get scale.q.
        { qconf -sc | grep -v '^#'; printf '%s jscale BOOL == FORCED NO FALSE 0\n' "$SCALE_COMPLEX"; } >"$work/complex"
        qconf -Mc "$work/complex" >>"$LOGS/sge.log" 2>&1 || true
        qconf -sc | grep -c "^$SCALE_COMPLEX " >/dev/null || die "could not add complex $SCALE_COMPLEX"
        log "sge: complex $SCALE_COMPLEX added (FORCED)"
    fi
    qconf -sh | grep -cxF "$NS_HOST" >/dev/null || qconf_host -ah "$NS_HOST" || die "qconf -ah $NS_HOST failed"
    qconf -ss | grep -cxF "$NS_HOST" >/dev/null || qconf_host -as "$NS_HOST" || die "qconf -as $NS_HOST failed"
    if ! qconf -se "$NS_HOST" >/dev/null 2>&1; then
        printf '%s\n' "hostname $NS_HOST" "load_scaling NONE" \
            "complex_values h_vmem=$(awk '$1 == "MemTotal:" {print $2}' /proc/meminfo)K" "user_lists NONE" \
            "xuser_lists NONE" "projects NONE" "xprojects NONE" "usage_scaling NONE" "report_variables NONE" \
            >"$work/exechost"
        qconf_host -Ae "$work/exechost" || die "qconf -Ae $NS_HOST failed (see $LOGS/sge.log)"
        log "sge: exec host $NS_HOST added"
    fi
    # scale.q: all.q's settings (setup_services.sh), both hosts, its own slots, only for jobs asking jobmon_scale.
    qconf -sq all.q | sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*//; ta' |
        awk -v q="$SCALE_QUEUE" -v hosts="$MAIN_HOST $NS_HOST" -v slots="$SCALE_SLOTS" -v cx="$SCALE_COMPLEX=TRUE" '
            $1 == "qname" { print "qname " q; next }
            $1 == "hostlist" { print "hostlist " hosts; next }
            $1 == "seq_no" { print "seq_no 10"; next }
            $1 == "slots" { print "slots " slots; next }
            $1 == "complex_values" { print "complex_values " cx; next }
            { print }' >"$work/queue"
    if qconf -sq "$SCALE_QUEUE" >"$work/queue.raw" 2>/dev/null; then
        sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*//; ta' "$work/queue.raw" | awk '{k = $1; $1 = ""; print k $0}' >"$work/queue.cur"
        awk '{k = $1; $1 = ""; print k $0}' "$work/queue" >"$work/queue.want"
        if cmp -s "$work/queue.cur" "$work/queue.want"; then
            log "sge: queue $SCALE_QUEUE unchanged"
        else
            qconf -Mq "$work/queue" >>"$LOGS/sge.log" 2>&1 || die "qconf -Mq $SCALE_QUEUE failed"
            log "sge: queue $SCALE_QUEUE updated"
        fi
    else
        qconf -Aq "$work/queue" >>"$LOGS/sge.log" 2>&1 || die "qconf -Aq $SCALE_QUEUE failed"
        log "sge: queue $SCALE_QUEUE added ($MAIN_HOST $NS_HOST, $SCALE_SLOTS slots each)"
    fi
}

execd_pidfile() { printf '/var/spool/gridengine/execd/%s/execd.pid' "$NS_HOST"; }

execd_alive() {
    local f pid
    f=$(execd_pidfile)
    [[ -r $f ]] || return 1
    pid=$(<"$f")
    [[ -r /proc/$pid/comm && $(<"/proc/$pid/comm") == sge_execd ]] || return 1
    # The pid must be inside our namespace (a pid file left over from an earlier namespace means nothing).
    ip netns pids "$NS" 2>/dev/null | grep -cxF "$pid" >/dev/null
}

queue_usable() {
    qstat -f -q "$SCALE_QUEUE@$1" | awk -v q="$SCALE_QUEUE@$1" '$1 == q && NF == 5 {ok = 1} END {exit !ok}'
}

start_execd() {
    if execd_alive; then
        log "sge execd ($NS_HOST): running (pid $(<"$(execd_pidfile)"))"
    else
        in_ns /usr/sbin/sge_execd >>"$LOGS/sge.log" 2>&1 </dev/null # daemonises inside the namespace
        wait_for 30 "sge_execd in $NS" execd_alive
        log "sge execd ($NS_HOST): started (pid $(<"$(execd_pidfile)"))"
    fi
    local host
    for host in "$MAIN_HOST" "$NS_HOST"; do
        qmod -c "$SCALE_QUEUE@$host" >>"$LOGS/sge.log" 2>&1 || true
        wait_for 90 "queue $SCALE_QUEUE@$host to become usable" queue_usable "$host"
    done
    log "sge: $SCALE_QUEUE usable on $MAIN_HOST and $NS_HOST"
}

# ---------------------------------------------------------------------------------------------------------------
# State Manager replicas, Airflow, Prometheus

http_ok() { curl -fsS -o /dev/null --max-time 5 "$@"; }

start_state_managers() {
    "$VENV_BIN/jobmon-airflow" db upgrade >>"$LOGS/jobmon-db.log" 2>&1 || die "jobmon-airflow db upgrade failed (see $LOGS/jobmon-db.log)"
    local i
    for i in "${!REPLICA_PORTS[@]}"; do
        start "replica-$((i + 1))" "" -- "$VENV_BIN/jobmon-airflow" server --host 127.0.0.1 --port "${REPLICA_PORTS[$i]}"
    done
    for i in "${!REPLICA_PORTS[@]}"; do
        wait_for 120 "State Manager replica on port ${REPLICA_PORTS[$i]}" \
            bash -c "exec 3<>/dev/tcp/127.0.0.1/${REPLICA_PORTS[$i]}"
    done
}

start_airflow() {
    local marker=$STATE/airflow/.migrated version
    version=$("$VENV_BIN/python" -c 'import importlib.metadata as m; print(m.version("apache-airflow-core"))')
    # Migrated for this version, into this database (the marker outlives a dropped PostgreSQL cluster).
    if [[ $(cat "$marker" 2>/dev/null) != "$version" ||
        -z $(psql_pg -d "$AIRFLOW_DB" -c "SELECT to_regclass('public.alembic_version')") ]]; then
        "$VENV_BIN/airflow" db migrate >>"$LOGS/airflow-migrate.log" 2>&1 || die "airflow db migrate failed (see $LOGS/airflow-migrate.log)"
        echo "$version" >"$marker"
        log "airflow: metadata database migrated ($version)"
    fi
    start api-server "" -- "$VENV_BIN/airflow" api-server -H "$HOST_IP" -p "$AIRFLOW_PORT"
    start scheduler "" -- "$VENV_BIN/airflow" scheduler
    start dag-processor "" -- "$VENV_BIN/airflow" dag-processor
    start triggerer-1 "" -- "$VENV_BIN/airflow" triggerer --skip-serve-logs
    start triggerer-2 "" -- "$VENV_BIN/airflow" triggerer --skip-serve-logs
    start worker-1 "" -- "$VENV_BIN/airflow" celery worker --celery-hostname "worker1@$MAIN_HOST" --skip-serve-logs
    start worker-2 ns -- "$VENV_BIN/airflow" celery worker --celery-hostname "worker2@$NS_HOST" --skip-serve-logs
}

start_prometheus() {
    # Airflow's StatsD metrics: a process of its own (its own registry, not the multiprocess directory).
    start statsd-bridge "" -- env -u PROMETHEUS_MULTIPROC_DIR "$VENV_BIN/python" -m jobmon_airflow.telemetry \
        --statsd "$HOST_IP:$STATSD_PORT" --listen "127.0.0.1:$STATSD_BRIDGE_PORT" --token-file "$STATE/metrics.token"
    cat >"$STATE/prometheus.yml" <<EOF
# Written by scripts/scale/up.sh. One target: every process of the set-up writes to one prometheus_client
# multiprocess directory, which any State Manager replica serves at /jobmon/metrics (bearer token).
global:
  scrape_interval: 2s
  evaluation_interval: 15s
scrape_configs:
  - job_name: jobmon
    metrics_path: /jobmon/metrics
    authorization:
      type: Bearer
      credentials_file: $STATE/metrics.token
    static_configs:
      - targets: ["$HOST_IP:$NGINX_PORT"]
  - job_name: airflow # Airflow's StatsD metrics through the bridge
    authorization:
      type: Bearer
      credentials_file: $STATE/metrics.token
    static_configs:
      - targets: ["127.0.0.1:$STATSD_BRIDGE_PORT"]
EOF
    start prometheus "" -- /usr/bin/prometheus --config.file="$STATE/prometheus.yml" \
        --storage.tsdb.path="$STATE/prometheus" --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
        --storage.tsdb.retention.time=7d
}

# A State Manager replica answered through nginx, from inside the namespace: 401 (no token), not 502/504.
state_manager_answers() {
    [[ $(in_ns curl -s -o /dev/null -w "%{http_code}" --max-time 5 -X POST "$STATE_MANAGER_URL/api/state/task_instance/1/log_running") == 401 ]]
}

wait_ready() {
    wait_for 180 "Airflow's API server on $HOST_IP:$AIRFLOW_PORT" http_ok "http://$HOST_IP:$AIRFLOW_PORT/api/v2/monitor/health"
    wait_for 60 "the State Manager through nginx, from $NS_HOST" state_manager_answers
    wait_for 60 "Prometheus on 127.0.0.1:$PROMETHEUS_PORT" http_ok "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
    local w
    for w in worker-1 worker-2; do
        wait_for 180 "Celery $w to be ready" grep -q ' ready\.' "$LOGS/$w.log"
    done
}

main() {
    umask 077
    mkdir -p "$STATE" "$LOGS" "$RUN"
    install_packages
    prepare_state
    setup_network
    setup_databases
    setup_postgres
    start_nginx
    start_redis
    setup_sge
    start_execd
    start_state_managers
    start_airflow
    start_prometheus
    wait_ready
    log "up in $((SECONDS - START))s; environment: $ENV_FILE; logs: $LOGS"
}

main "$@"
