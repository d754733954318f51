#!/usr/bin/env bash
# Stand up the services the integration tests need, on one Debian 12 host, as root, without systemd:
#   * Son of Grid Engine 8.1.9 (qmaster + execd on this host, queue all.q, PE smp, h_vmem consumable);
#   * MariaDB on 127.0.0.1:3306 with database `jobmon` and user `jobmon`/`jobmon`.
# Idempotent: a re-run with everything up only checks, and changes only what differs.
# Quiet: one line per step on stderr; command output goes to $SETUP_LOG, whose tail is shown on failure.
# Facts behind every step: shared/reference/gridengine.md.
set -euo pipefail

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
export DEBIAN_FRONTEND=noninteractive
SGE_SPOOL=/var/spool/gridengine
SGE_COMMON=$SGE_ROOT/$SGE_CELL/common
SETUP_LOG=${SETUP_LOG:-/var/log/jobmon-setup-services.log}
DB_NAME=jobmon DB_USER=jobmon DB_PASSWORD=jobmon
H_VMEM_DEFAULT=4G # a consumable's default becomes the hard limit of jobs that request nothing: never 0
SGE_PACKAGES=(gridengine-master gridengine-exec gridengine-client)
DB_PACKAGES=(mariadb-server mariadb-client)
# Further services (browser, nginx, Redis, Prometheus, ...) live in scripts/services/<name>.sh, each with a
# <name>.packages list (one Debian package a line) installed here in the same apt run; each .sh is sourced after
# Grid Engine and MariaDB are up (it may use log, quiet, wait_for, alive, die) and must be idempotent.
SERVICES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/services"
EXTRA_PACKAGES=()
for list in "$SERVICES_DIR"/*.packages; do
    [[ -e $list ]] || continue
    while read -r pkg; do
        [[ -n $pkg && $pkg != \#* ]] && EXTRA_PACKAGES+=("$pkg")
    done <"$list"
done

WORK=$(mktemp -d /tmp/setup-services.XXXXXX)
CREATED_POLICY_RC=0
START=$SECONDS

LOG_NAME=setup_services
# shellcheck source=scripts/shell_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/shell_lib.sh"

on_exit() {
    local rc=$?
    if ((CREATED_POLICY_RC)); then rm -f /usr/sbin/policy-rc.d; fi
    rm -rf "$WORK"
    if ((rc != 0)); then
        log "failed (exit $rc); last lines of $SETUP_LOG:"
        tail -n 25 "$SETUP_LOG" >&2 || true
    fi
}
trap on_exit EXIT

# Run a command with its output in the log only.
quiet() { printf '+ %s\n' "$*" >>"$SETUP_LOG"; "$@" >>"$SETUP_LOG" 2>&1; }

# A daemon is alive when its pidfile names a live, non-zombie process with the expected name
# (PID 1 here may not reap orphans, so a stopped daemon can linger as <defunct>).
alive() {
    local pidfile=$1 comm=$2 pid
    [[ -r $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/comm ]] || return 1
    [[ $(<"/proc/$pid/comm") == "$comm" ]] || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status"
}

installed() {
    local pkg
    for pkg in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] || return 1
    done
}

# ---------------------------------------------------------------------------------------------------------------
# Host name: Grid Engine needs host name -> IPv4 -> host name; a loopback mapping makes the qmaster "localhost".

fix_hosts() {
    local host short ip
    host=$(hostname)
    short=$(hostname -s)
    ip=$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}') || true
    if [[ -z $ip ]]; then
        ip=$(hostname -I | tr ' ' '\n' | grep -E '^[0-9.]+$' | grep -v '^127\.' | head -n 1) || true
    fi
    [[ -n $ip ]] || die "no non-loopback IPv4 address found (ip -4 route get 1.1.1.1, hostname -I)"
    # Drop the host name and its aliases from every line, fold other names of our IP into our line, and put
    # "<ip> <host>" last; unrelated lines (localhost, comments) stay as they are.
    awk -v ip="$ip" -v host="$host" -v short="$short" '
        /^[[:space:]]*(#|$)/ { print; next }
        {
            names = ""
            for (i = 2; i <= NF; i++) {
                if ($i == host || $i == short || index($i, short ".") == 1) continue
                names = names " " $i
            }
            if ($1 == ip) { extra = extra names; next }
            if (names != "") print $1 names
        }
        END { print ip " " host (short != host ? " " short : "") extra }
    ' /etc/hosts >"$WORK/hosts"
    if cmp -s "$WORK/hosts" /etc/hosts; then
        log "hosts: $host -> $ip (unchanged)"
    else
        cp /etc/hosts "$WORK/hosts.orig"
        cat "$WORK/hosts" >/etc/hosts # in place: in containers /etc/hosts is a bind mount
        log "hosts: $host -> $ip (rewrote /etc/hosts)"
    fi
    [[ $(getent hosts "$host" | awk '{print $1; exit}') == "$ip" ]] || die "getent hosts $host does not give $ip"
    SGE_HOST=$host
}

# ---------------------------------------------------------------------------------------------------------------
# Packages: preseeded so the master postinst builds the cell; policy-rc.d keeps postinst from starting daemons.

install_packages() {
    if installed "${SGE_PACKAGES[@]}" "${DB_PACKAGES[@]}" "${EXTRA_PACKAGES[@]}"; then
        log "packages: gridengine, mariadb and ${#EXTRA_PACKAGES[@]} service packages already installed"
        return
    fi
    local t0=$SECONDS pkg
    for pkg in gridengine-common gridengine-client gridengine-exec gridengine-master; do
        printf '%s shared/gridengineconfig boolean true\n%s shared/gridenginecell string %s\n%s shared/gridenginemaster string %s\n' \
            "$pkg" "$pkg" "$SGE_CELL" "$pkg" "$SGE_HOST"
    done >"$WORK/preseed"
    quiet debconf-set-selections "$WORK/preseed"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        CREATED_POLICY_RC=1
    fi
    quiet apt-get update -q
    quiet apt-get install -y -q --no-install-recommends "${SGE_PACKAGES[@]}" "${DB_PACKAGES[@]}" "${EXTRA_PACKAGES[@]}"
    log "packages: installed ${SGE_PACKAGES[*]} ${DB_PACKAGES[*]} ${EXTRA_PACKAGES[*]} in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------------------------------------
# Grid Engine

prepare_sge_spool() {
    local what="present"
    if [[ ! -e $SGE_SPOOL/spooldb/sge ]]; then
        # The package was installed without the preseed (or the spool was wiped): build the cell as its postinst does.
        mkdir -p "$SGE_SPOOL/qmaster/job_scripts" "$SGE_SPOOL/spooldb" "$SGE_COMMON"
        chown -R sgeadmin:sgeadmin "$SGE_SPOOL" "$SGE_ROOT/$SGE_CELL"
        quiet su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL $SGE_SPOOL/spooldb sgeadmin" sgeadmin
        what="created"
    fi
    mkdir -p "$SGE_SPOOL/execd" /var/run/gridengine
    chown sgeadmin:sgeadmin "$SGE_SPOOL/execd" /var/run/gridengine
    if [[ $(cat "$SGE_COMMON/act_qmaster" 2>/dev/null) != "$SGE_HOST" ]]; then
        echo "$SGE_HOST" >"$SGE_COMMON/act_qmaster"
        chown sgeadmin:sgeadmin "$SGE_COMMON/act_qmaster"
        what="$what, act_qmaster set to $SGE_HOST"
    fi
    log "sge cell: spool $what"
}

start_qmaster() {
    if alive "$SGE_SPOOL/qmaster/qmaster.pid" sge_qmaster; then
        log "sge qmaster: running (pid $(<"$SGE_SPOOL/qmaster/qmaster.pid"))"
    else
        quiet /usr/sbin/sge_qmaster </dev/null
        wait_for 30 "sge_qmaster to answer qconf -sss" qconf -sss
        log "sge qmaster: started (pid $(<"$SGE_SPOOL/qmaster/qmaster.pid"))"
    fi
}

# An SGE object dump as "key value" lines: continuation lines joined, blanks squeezed, comments dropped.
sge_flat() {
    sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*//; ta' |
        awk '!/^[[:space:]]*(#|$)/ { key = $1; $1 = ""; sub(/^ +/, ""); print key " " $0 }'
}

# Overlay "key value" lines from file $1 onto a flat dump on stdin (keys missing from the dump are appended).
sge_overlay() {
    awk 'NR == FNR { key = $1; $1 = ""; sub(/^ +/, ""); want[key] = $0; order[++n] = key; next }
         ($1 in want) { print $1 " " want[$1]; done[$1] = 1; next }
         { print }
         END { for (i = 1; i <= n; i++) if (!(order[i] in done)) print order[i] " " want[order[i]] }' "$1" -
}

# True when some line of the desired object $1 is not in the current one $2 (both flat).
differs() { grep -qvxFf "$2" "$1"; }

# Bring one SGE object to the desired state: converge <label> <desired file> <current file> <qconf -M/-A option>.
# The caller has written both files flat; nothing is loaded when the desired lines are already there.
converge() {
    local label=$1 desired=$2 current=$3 option=$4
    if differs "$desired" "$current"; then
        quiet qconf "$option" "$desired"
        log "sge $label: loaded (qconf $option)"
    else
        log "sge $label: unchanged"
    fi
}

configure_global() {
    local dir=$WORK/conf
    mkdir -p "$dir"
    qconf -sconf global | sge_flat >"$WORK/global.current"
    cat >"$WORK/global.want" <<EOF
execd_spool_dir $SGE_SPOOL/execd
min_uid 0
min_gid 0
shell_start_mode unix_behavior
load_report_time 00:00:10
execd_params ENABLE_ADDGRP_KILL=true
reporting_params accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00
mailer /bin/true
EOF
    # The file must be called "global": its name selects the configuration qconf -Mconf replaces.
    sge_overlay "$WORK/global.want" <"$WORK/global.current" >"$dir/global"
    converge "global config" "$dir/global" "$WORK/global.current" -Mconf
}

configure_scheduler() {
    qconf -ssconf | sge_flat >"$WORK/sconf.current"
    cat >"$WORK/sconf.want" <<EOF
schedule_interval 0:0:1
schedd_job_info false
job_load_adjustments NONE
load_adjustment_decay_time 0:0:0
EOF
    sge_overlay "$WORK/sconf.want" <"$WORK/sconf.current" >"$WORK/sconf"
    converge scheduler "$WORK/sconf" "$WORK/sconf.current" -Msconf
}

configure_complexes() {
    qconf -sc >"$WORK/complex.current"
    # Columns: name shortcut type relop requestable consumable default urgency.
    awk -v d="$H_VMEM_DEFAULT" '$1 == "h_vmem" { $5 = "YES"; $6 = "YES"; $7 = d } { print }' \
        "$WORK/complex.current" >"$WORK/complex"
    if [[ $(awk '$1 == "h_vmem"' "$WORK/complex.current" | xargs) == $(awk '$1 == "h_vmem"' "$WORK/complex" | xargs) ]]; then
        log "sge complexes: h_vmem already consumable, default $H_VMEM_DEFAULT"
        return
    fi
    # qconf -Mc exits non-zero when nothing changed; judge by what qconf -sc shows afterwards.
    quiet qconf -Mc "$WORK/complex" || true
    [[ $(qconf -sc | awk '$1 == "h_vmem" {print $6, $7}') == "YES $H_VMEM_DEFAULT" ]] ||
        die "h_vmem is not consumable with default $H_VMEM_DEFAULT after qconf -Mc: $(qconf -sc | grep h_vmem)"
    log "sge complexes: h_vmem made consumable, default $H_VMEM_DEFAULT"
}

configure_hosts() {
    local changed=""
    if ! qconf -sh 2>/dev/null | grep -qxF "$SGE_HOST"; then quiet qconf -ah "$SGE_HOST"; changed+=" admin"; fi
    if ! qconf -ss 2>/dev/null | grep -qxF "$SGE_HOST"; then quiet qconf -as "$SGE_HOST"; changed+=" submit"; fi
    log "sge hosts: $SGE_HOST is admin and submit host${changed:+ (added:$changed)}"

    local mem_kb
    mem_kb=$(awk '$1 == "MemTotal:" {print $2}' /proc/meminfo)
    cat >"$WORK/exechost" <<EOF
hostname $SGE_HOST
load_scaling NONE
complex_values h_vmem=${mem_kb}K
user_lists NONE
xuser_lists NONE
projects NONE
xprojects NONE
usage_scaling NONE
report_variables NONE
EOF
    if qconf -se "$SGE_HOST" >"$WORK/exechost.raw" 2>/dev/null; then
        sge_flat <"$WORK/exechost.raw" >"$WORK/exechost.current"
        converge "exec host $SGE_HOST" "$WORK/exechost" "$WORK/exechost.current" -Me
    else
        converge "exec host $SGE_HOST" "$WORK/exechost" /dev/null -Ae
    fi
}

configure_pe() {
    cat >"$WORK/smp" <<'EOF'
pe_name smp
slots 9999
user_lists NONE
xuser_lists NONE
start_proc_args NONE
stop_proc_args NONE
allocation_rule $pe_slots
control_slaves FALSE
job_is_first_task TRUE
urgency_slots min
accounting_summary FALSE
qsort_args NONE
EOF
    if qconf -sp smp >"$WORK/smp.raw" 2>/dev/null; then
        sge_flat <"$WORK/smp.raw" >"$WORK/smp.current"
        converge "pe smp" "$WORK/smp" "$WORK/smp.current" -Mp
    else
        converge "pe smp" "$WORK/smp" /dev/null -Ap
    fi
}

configure_queue() {
    local slots option limit
    slots=$(nproc)
    ((slots >= 2)) || slots=2
    {
        printf '%s\n' "qname all.q" "hostlist $SGE_HOST" "seq_no 0" "slots $slots" "pe_list smp" \
            "load_thresholds NONE" "suspend_thresholds NONE" "qtype BATCH INTERACTIVE" "shell /bin/bash" \
            "shell_start_mode unix_behavior" "rerun FALSE" "complex_values NONE" "user_lists NONE" \
            "xuser_lists NONE" "projects NONE" "xprojects NONE"
        # No queue-level limits: every limit comes from the job's own request (h_rt, h_vmem).
        for limit in rt cpu fsize data stack core rss vmem; do printf 's_%s INFINITY\nh_%s INFINITY\n' "$limit" "$limit"; done
    } >"$WORK/queue.want"
    if qconf -sq all.q >"$WORK/queue.raw" 2>/dev/null; then
        option=-Mq
    else
        # No queue yet: take qconf's own template for a new queue (the "editor" copies it and refuses the edit),
        # so that fields this script does not set keep their stock defaults.
        # shellcheck disable=SC2016 # "$1" belongs to the editor script: it is qconf's temporary file
        printf '#!/bin/sh\ncp "$1" %q\nexit 1\n' "$WORK/queue.raw" >"$WORK/copy-editor"
        chmod 755 "$WORK/copy-editor"
        EDITOR=$WORK/copy-editor qconf -aq all.q >>"$SETUP_LOG" 2>&1 || true
        [[ -s $WORK/queue.raw ]] || die "could not capture a queue template with qconf -aq"
        option=-Aq
    fi
    sge_flat <"$WORK/queue.raw" >"$WORK/queue.current"
    sge_overlay "$WORK/queue.want" <"$WORK/queue.current" >"$WORK/queue"
    if [[ $option == -Aq ]]; then : >"$WORK/queue.current"; fi
    converge "queue all.q" "$WORK/queue" "$WORK/queue.current" "$option"
}

start_execd() {
    local pidfile=$SGE_SPOOL/execd/$SGE_HOST/execd.pid
    if alive "$pidfile" sge_execd; then
        log "sge execd: running (pid $(<"$pidfile"))"
    else
        quiet /usr/sbin/sge_execd </dev/null
        wait_for 30 "sge_execd pidfile" alive "$pidfile" sge_execd
        log "sge execd: started (pid $(<"$pidfile"))"
    fi
}

# The queue instance is usable when qstat -f lists it with an empty states column.
queue_usable() { qstat -f -q "all.q@$SGE_HOST" | awk -v q="all.q@$SGE_HOST" '$1 == q && NF == 5 {ok = 1} END {exit !ok}'; }

wait_queue() {
    quiet qmod -c "all.q@$SGE_HOST" || true # clear an error state left by an earlier run
    local t0=$SECONDS
    wait_for 60 "queue all.q@$SGE_HOST to become usable (qstat -f shows a state)" queue_usable
    log "sge queue: all.q@$SGE_HOST usable (waited $((SECONDS - t0))s)"
}

write_profile() {
    local file=/etc/profile.d/jobmon-sge.sh
    printf '# Grid Engine client environment (written by jobmon-airflow scripts/setup_services.sh)\nexport SGE_ROOT=%s SGE_CELL=%s\n' \
        "$SGE_ROOT" "$SGE_CELL" >"$WORK/profile"
    if cmp -s "$WORK/profile" "$file"; then
        log "profile: $file unchanged"
    else
        cat "$WORK/profile" >"$file"
        log "profile: wrote $file"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# MariaDB

start_mariadb() {
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        quiet mariadb-install-db --user=mysql --datadir=/var/lib/mysql
        log "mariadb: initialised /var/lib/mysql"
    fi
    if mariadb-admin ping >/dev/null 2>&1; then
        log "mariadb: running"
        return
    fi
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    setsid nohup mysqld_safe --user=mysql --datadir=/var/lib/mysql --pid-file=/run/mysqld/mysqld.pid \
        --bind-address=127.0.0.1 --port=3306 >/var/log/mysqld_safe.out 2>&1 </dev/null &
    wait_for 60 "mariadb to answer mariadb-admin ping (see /var/log/mysqld_safe.out)" mariadb-admin ping
    log "mariadb: started on 127.0.0.1:3306"
}

create_database() {
    local sql="CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;" host
    for host in localhost 127.0.0.1 %; do
        sql+="
CREATE USER IF NOT EXISTS '$DB_USER'@'$host' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER '$DB_USER'@'$host' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'$host';
GRANT ALL PRIVILEGES ON \`${DB_NAME}\_test%\`.* TO '$DB_USER'@'$host';"
    done
    quiet mariadb -e "$sql FLUSH PRIVILEGES;"
    # The password goes in the environment, never on a command line (ps).
    MYSQL_PWD="$DB_PASSWORD" quiet mariadb -h 127.0.0.1 -P 3306 -u "$DB_USER" "$DB_NAME" -e 'SELECT 1' ||
        die "cannot log in as $DB_USER over TCP 127.0.0.1:3306"
    log "mariadb: database $DB_NAME (and ${DB_NAME}_test* for test sessions) and user $DB_USER ready (TCP login checked)"
}

# ---------------------------------------------------------------------------------------------------------------

main() {
    ((EUID == 0)) || die "run as root (installs packages, writes /etc/hosts, starts daemons)"
    : >>"$SETUP_LOG"
    printf '\n=== %s setup_services.sh\n' "$(date -Is)" >>"$SETUP_LOG"
    fix_hosts
    install_packages
    prepare_sge_spool
    start_qmaster
    configure_global
    configure_scheduler
    configure_complexes
    configure_hosts
    configure_pe
    configure_queue
    start_execd
    wait_queue
    write_profile
    start_mariadb
    create_database
    local extra
    for extra in "$SERVICES_DIR"/*.sh; do
        [[ -e $extra ]] || continue
        # shellcheck source=/dev/null
        source "$extra"
    done
    log "done in $((SECONDS - START))s (log: $SETUP_LOG)"
}

main "$@"
