#!/usr/bin/env bash
# Re-record the Grid Engine outputs in this directory from the real single-host cluster that
# scripts/setup_services.sh stands up (root, 2 slots in all.q). Takes about a minute; kills only its own jobs.
# Usage: tests/data/gridengine/record.sh [output dir, default: this directory]
set -euo pipefail
export SGE_ROOT=${SGE_ROOT:-/var/lib/gridengine} SGE_CELL=${SGE_CELL:-default}
OUT=$(realpath "${1:-$(dirname "$0")}")
WORK=$(mktemp -d /tmp/sge-record.XXXXXX)
ACCOUNTING=$SGE_ROOT/$SGE_CELL/common/accounting
LOGS=$WORK/logs
mkdir -p "$LOGS"
ours=()
trap 'if ((${#ours[@]})); then qdel "${ours[@]}" >/dev/null 2>&1 || true; fi; rm -rf "$WORK"' EXIT

sub() { # sub <name> <qsub options and command...>: submit, remember the id, print it
    local name=$1 out id
    shift
    out=$(qsub -terse -N "$name" -o "$LOGS/" -e "$LOGS/" "$@")
    id=${out%%.*}
    ours+=("$id")
    echo "$id"
}
state_of() { qstat -u '*' | awk -v id="$1" '$1 == id {print $5; exit}'; }
wait_state() { # wait_state <id> <state regex>
    local _
    for _ in $(seq 120); do [[ $(state_of "$1") =~ $2 ]] && return; sleep 0.25; done
    echo "job $1 never reached state $2" >&2
    return 1
}
wait_gone() { local id; for id in "$@"; do while qstat -j "$id" >/dev/null 2>&1; do sleep 0.25; done; done; }
account() { # account <id> <file>: copy the job's raw accounting line(s), waiting for the flush
    local _
    for _ in $(seq 60); do
        if awk -F: -v id="$1" '$6 == id' "$ACCOUNTING" | grep -q .; then
            awk -F: -v id="$1" '$6 == id' "$ACCOUNTING" >"$OUT/$2"
            return
        fi
        sleep 0.25
    done
    echo "no accounting record for job $1" >&2
    return 1
}

cat >"$WORK/mem3.py" <<'PY'
# Three children of 60 MB each: every process stays under RLIMIT_AS (200M), their sum goes over h_vmem.
import os, time
for _ in range(3):
    if os.fork() == 0:
        block = bytearray(60 * 1024 * 1024)
        time.sleep(20)
        os._exit(0)
time.sleep(20)
PY
printf '#!/bin/sh\nexit 3\n' >"$WORK/exit3.sh"
cat >"$WORK/rlimit.py" <<'PY'
import os, resource
print(os.environ.get("NSLOTS"), os.environ.get("PE"), resource.getrlimit(resource.RLIMIT_AS))
PY

# --- qsub -terse outputs and a rejection --------------------------------------------------------------------
qsub -terse -h -N terse -o "$LOGS/" -e "$LOGS/" -b y /bin/true | tee "$OUT/qsub_terse_single.txt" >/dev/null
ours+=("$(<"$OUT/qsub_terse_single.txt")")
qsub -terse -h -t 1-10 -N terse -o "$LOGS/" -e "$LOGS/" -b y /bin/true | tee "$OUT/qsub_terse_array.txt" >/dev/null
ours+=("$(cut -d. -f1 "$OUT/qsub_terse_array.txt")")
qsub -terse -w e -pe smp 99 -b y /bin/true 2>"$OUT/qsub_rejected_no_suitable_queues.txt" && exit 1
qdel "${ours[@]}" >/dev/null

# --- qstat -xml: Eqw, a 5-element array (2 running, 3-5 pending), qw, hqw, a pending PE job ---------------------
eqw=$(sub eqw -wd /nonexistent/dir -b y /bin/true)
eqwarr=$(sub eqwarr -t 1-2 -wd /nonexistent/dir -b y /bin/true)
wait_state "$eqw" Eqw
wait_state "$eqwarr" Eqw
gaps=$(sub gaps -h -t 1-5 -b y /bin/true)
qdel "$gaps.2" "$gaps.4" >/dev/null
arr=$(sub arr -t 1-5 -tc 2 -b y /bin/sleep 60)
while (($(qstat -u '*' | awk -v id="$arr" '$1 == id && $5 == "r"' | wc -l) < 2)); do sleep 0.25; done
pend=$(sub pend -b y /bin/sleep 60)
held=$(sub held -h -b y /bin/sleep 60)
pe=$(sub pe2 -pe smp 2 -b y /bin/sleep 60)
wait_state "$pend" '^qw$'
qstat -u '*' -xml >"$OUT/qstat_mixed.xml"
qstat -u '*' >"$OUT/qstat_mixed.txt"
qstat -j "$eqw,$eqwarr" >"$OUT/qstat_j_eqw.txt"
qmod -sj "$arr.1" >/dev/null
wait_state "$arr" s
qstat -u '*' -xml >"$OUT/qstat_suspended.xml"
qdel "$arr" >/dev/null
qstat -u '*' -xml >"$OUT/qstat_deleting.xml" # caught while qdel of the running tasks is in progress ("dr")
qdel "$eqw" "$eqwarr" "$gaps" "$pend" "$held" "$pe" >/dev/null
wait_gone "$arr" "$eqw" "$eqwarr" "$gaps" "$pend" "$held" "$pe"
qstat -u '*' -xml >"$OUT/qstat_empty.xml"

# --- accounting lines, one file per outcome --------------------------------------------------------------------
done_=$(sub "done" -b y /bin/sleep 1)
exit3=$(sub exit3 -b y /bin/sh "$WORK/exit3.sh")
vmem=$(sub vmem -l h_vmem=200M -b y /usr/bin/python3 "$WORK/mem3.py")
wait_gone "$done_" "$exit3"
hrt=$(sub hrt -l h_rt=0:0:3 -b y /bin/sleep 30)
kill=$(sub qdel -b y /bin/sleep 60)
wait_state "$kill" '^r$'
sleep 1
qdel "$kill" >/dev/null
wait_gone "$vmem" "$hrt" "$kill"
pe=$(sub pe2 -pe smp 2 -l h_vmem=1G -b y /usr/bin/python3 "$WORK/rlimit.py")
wait_gone "$pe"
grep -h . "$LOGS"/pe2.o"$pe" >"$OUT/pe_smp2_job_stdout.txt"
arr=$(sub arr -t 1-3 -b y /bin/true)
wait_gone "$arr"
account "$done_" accounting_done.txt
account "$exit3" accounting_exit3.txt
account "$vmem" accounting_h_vmem_kill.txt
account "$hrt" accounting_h_rt_kill.txt
account "$kill" accounting_qdel_running.txt
account "$pe" accounting_pe_smp2.txt
account "$arr" accounting_array.txt
account "$eqw" accounting_eqw_deleted.txt # written at the failed dispatch, before the qdel
while (($(wc -l <"$OUT/accounting_array.txt") < 3)); do sleep 0.25; account "$arr" accounting_array.txt; done
grep -h "job $vmem.1 exceeds\|$hrt.1.*wallclock" "/var/spool/gridengine/execd/$(hostname)/messages" >"$OUT/execd_messages_kills.txt" || true

qconf -sq all.q >"$OUT/qconf_sq_all.q.txt"
qconf -sp smp >"$OUT/qconf_sp_smp.txt"
qconf -se "$(hostname)" >"$OUT/qconf_se_host.txt"
qconf -sql >"$OUT/qconf_sql.txt"
qconf -sq nosuch.q 2>"$OUT/qconf_sq_unknown_queue.txt" && exit 1

# --- an unreachable qmaster, without touching the real one: a port nobody listens on, and a copy of the cell whose
# act_qmaster is "localhost" (refused at connect: "access denied"). Every command exits 1 having done nothing.
SGE_QMASTER_PORT=1 qsub -terse -h -b y /bin/true 2>"$OUT/qsub_qmaster_unreachable.txt" && exit 1
SGE_QMASTER_PORT=1 qstat -u '*' -xml 2>"$OUT/qstat_qmaster_unreachable.txt" && exit 1
SGE_QMASTER_PORT=1 qdel 999999 >"$WORK/qdel.out" 2>"$OUT/qdel_qmaster_unreachable.txt" && exit 1
cat "$WORK/qdel.out" >>"$OUT/qdel_qmaster_unreachable.txt"
mkdir -p "$WORK/sge/$SGE_CELL/common"
cp "$SGE_ROOT/$SGE_CELL/common/bootstrap" "$WORK/sge/$SGE_CELL/common/"
echo localhost >"$WORK/sge/$SGE_CELL/common/act_qmaster"
(cd "$WORK" && SGE_ROOT=$WORK/sge qsub -terse -h -b y /bin/true 2>"$OUT/qsub_qmaster_access_denied.txt") && exit 1
ours=()
echo "recorded into $OUT"
