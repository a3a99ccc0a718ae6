#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the integration tests (tests/test_slurm.py)
# and for trying the study's slurm executor by hand.
#
#   tools/slurm_local.sh install   apt-get install slurm-wlm, munge (and, for sacct, slurmdbd and
#                                  mariadb-server); does nothing when they are there already
#   tools/slurm_local.sh start     install if needed, then start munged, [mariadb, slurmdbd,]
#                                  slurmctld and slurmd, and wait until the node is idle
#                                  (already running: checks and returns 0)
#   tools/slurm_local.sh stop      cancel every job, stop the daemons this script started
#                                  (SIGTERM, SIGKILL after 15 s; munged only if it started it)
#   tools/slurm_local.sh status    which daemons run, and sinfo; exit 0 when the cluster is up
#   tools/slurm_local.sh logs      the tails of the daemons' logs
#
# Needs root, Debian/Ubuntu (apt) and no systemd: every daemon is started by hand. Settings, all
# optional, from the environment:
#   SLURM_LOCAL_DIR         state, spool, pid and log files (default /var/spool/slurm-local);
#                           logs are in $SLURM_LOCAL_DIR/log
#   SLURM_LOCAL_ACCOUNTING  1 (default): run slurmdbd on a private MariaDB so that `sacct` works;
#                           0: no accounting (sacct fails; see "submitit" below)
#   SLURM_LOCAL_CPUS        CPUs to declare for the node (default: what `slurmd -C` finds); more
#                           than the machine has lets more 1-CPU jobs run at once
#   SLURM_LOCAL_TIMEOUT     seconds to wait for each daemon and for the node (default 60)
#   SLURM_LOCAL_CRED_EXPIRE seconds a job credential lives (default 20; slurm's default 120).
#                           Slurm holds a requeued job (Reason=BeginTime) this long before it
#                           may start again; 20 keeps the requeue test short
#   SLURM_LOCAL_DB_PORT     MariaDB's TCP port on 127.0.0.1 (default 6833); slurm keeps its
#                           default ports 6817 (slurmctld), 6818 (slurmd), 6819 (slurmdbd)
#
# The config goes where the clients look by default: /etc/slurm/slurm.conf (and slurmdbd.conf),
# so sbatch, squeue, sacct and submitit need no SLURM_CONF. The script refuses to overwrite a
# slurm.conf it did not write (first line "# Written by tools/slurm_local.sh").
# Every `start` on a stopped cluster begins from empty state (job ids from 1, empty accounting
# database), so sacct never sees an old job under a reused id. A `start` that fails stops what it
# started, and prints why with the tails of the daemons' logs. Pid files are checked against
# /proc/PID/comm, so a stale pid is never taken for (or killed as) a daemon.
#
# Tested on Debian 12 (bookworm), as root in a container without systemd (gVisor, 2 CPUs):
#   slurm-wlm, slurmctld, slurmd, slurm-client, slurmdbd  22.05.8-4+deb12u3
#   munge, libmunge2                                      0.5.15-2+deb12u1
#   mariadb-server                                        1:10.11.19-0+deb12u1
# Install with --no-install-recommends: about 10 s for slurm + munge, 25 s more for slurmdbd +
# MariaDB (after `apt-get update`); start 6-12 s; stop ~5 s.
#
# Container quirks and what this script does about them:
# - The packages' postinst scripts cannot start their services ("policy-rc.d denied execution of
#   start"; no systemd): each daemon is started here by hand, in the background, its stdio on
#   /dev/null or its log so that a caller capturing output (pytest's subprocess) never hangs.
# - munge: /run/munge (a systemd RuntimeDirectory) does not exist in a container: created here,
#   owned by munge, mode 0755. munged runs as user munge (runuser), as the unit file does. The
#   key /etc/munge/munge.key is made by the munge postinst; if missing, `mungekey` makes it
#   (munge:munge, 0400).
# - cgroups: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
#   JobAcctGatherType=jobacct_gather/none, so no cgroup.conf is needed and nothing is written
#   under /sys/fs/cgroup. (On this gVisor machine proctrack/cgroup + task/cgroup did work, on
#   cgroup v1; but an unprivileged Docker container mounts /sys/fs/cgroup read-only, where they
#   cannot. Tests need no CPU/memory enforcement.)
# - slurmd is started without -D (it daemonizes itself, as do slurmctld, slurmdbd and munged);
#   only mariadbd is put in the background by the script (setsid ... &).
# - slurmdbd logs "Database settings not recommended values: innodb_buffer_pool_size ...": the
#   private MariaDB is kept small on purpose (32 MB buffer pool); harmless for a test cluster.
# - munged logs "Unauthorized credential for client UID=0 GID=0" (Info) while the daemons start:
#   harmless.
# - Slurm holds a requeued job for cred_expire seconds (see SLURM_LOCAL_CRED_EXPIRE), and by
#   default looks at pending jobs only every 60 s: SchedulerParameters=sched_interval=2 so a
#   requeued job starts again as soon as it may.
# - slurmd logs "mpi/pmix: can not load PMIx library" errors at start: harmless (libpmix is only
#   a recommended package; MpiDefault=none).
# - The daemons run as root (SlurmUser=root) so the state dirs need no chown; jobs run as the
#   submitting user (root here).
# - slurmd -C gives the node's CPUs/sockets/cores/memory; with SLURM_LOCAL_CPUS the node is
#   declared with that many CPUs and SlurmdParameters=config_overrides (else slurmd would drain
#   the node for having fewer CPUs than configured).
# - submitit reads job states from `sacct` only. Without accounting sacct exits 1 ("Slurm
#   accounting storage is disabled"), submitit logs "Bypassing sacct error" and takes every job
#   as UNKNOWN, i.e. still running: job.result() of a job cancelled with scancel then waits
#   forever. Hence the default SLURM_LOCAL_ACCOUNTING=1: a private MariaDB (datadir under
#   SLURM_LOCAL_DIR, TCP on 127.0.0.1:$SLURM_LOCAL_DB_PORT, run as root) behind slurmdbd.
#   slurmctld registers the cluster in the database itself on first contact.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/var/spool/slurm-local}
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
DB_PORT=${SLURM_LOCAL_DB_PORT:-6833}
CRED_EXPIRE=${SLURM_LOCAL_CRED_EXPIRE:-20}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
DBD_CONF=$CONF_DIR/slurmdbd.conf
MARK="# Written by tools/slurm_local.sh"
CLUSTER=local
LOG=$DIR/log

die() { echo "slurm_local: $*" >&2; exit 1; }
say() { echo "slurm_local: $*"; }

need_root() {
    [[ $(uname -s) == Linux ]] || die "needs Linux"
    [[ $(id -u) == 0 ]] || die "needs root (it installs packages and starts system daemons)"
}

# ---- install -----------------------------------------------------------------------------------
packages() {  # one a line
    printf '%s\n' slurm-wlm munge
    if [[ $ACCOUNTING == 1 ]]; then printf '%s\n' slurmdbd mariadb-server; fi
}

installed() {
    local b
    for b in slurmctld slurmd sbatch munged mungekey; do command -v "$b" >/dev/null || return 1; done
    if [[ $ACCOUNTING == 1 ]]; then
        for b in slurmdbd sacct mariadbd mariadb-install-db; do
            command -v "$b" >/dev/null || return 1
        done
    fi
}

cmd_install() {
    need_root
    installed && return 0
    local -a pkgs
    mapfile -t pkgs < <(packages)
    command -v apt-get >/dev/null || die "apt-get not found: install ${pkgs[*]} by hand"
    local log=/tmp/slurm_local_apt.log
    say "installing ${pkgs[*]} (log $log)"
    export DEBIAN_FRONTEND=noninteractive
    # the package lists may be missing or stale: update only when the install fails without
    if ! apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >"$log" 2>&1; then
        apt-get update -qq >>"$log" 2>&1 || true
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >>"$log" 2>&1 \
            || { tail -20 "$log" >&2; die "apt-get install ${pkgs[*]} failed"; }
    fi
    installed || die "installed ${pkgs[*]} but some of their programs are still missing"
    say "installed: $(dpkg-query -W -f '${Package} ${Version}  ' "${pkgs[@]}" 2>/dev/null)"
}

# ---- helpers -----------------------------------------------------------------------------------
alive() {  # alive PIDFILE: the process in PIDFILE runs and is the daemon the file is named for
    [[ -s $1 ]] || return 1
    local pid want comm
    pid=$(cat "$1")
    want=$(basename "$1" .pid)
    [[ $want == mysqld ]] && want=mariadbd
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$want" ]]  # not a stale pid reused by another process
}

wait_for() {  # wait_for WHAT COMMAND...: retry COMMAND for TIMEOUT seconds
    local what=$1; shift
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS - t0 >= TIMEOUT )); then
            {
                echo "slurm_local: timed out after ${TIMEOUT}s waiting for $what"
                echo "---- last try: $*"
                "$@" 2>&1 | tail -n 5 || true
                show_logs
            } >&2
            exit 1
        fi
        sleep 0.5
    done
}

show_logs() {
    local f
    for f in "$LOG"/slurmctld.log "$LOG"/slurmd.log "$LOG"/slurmdbd.log "$LOG"/mariadb.log \
             /var/log/munge/munged.log; do
        [[ -s $f ]] || continue
        echo "---- tail $f"
        tail -n 20 "$f"
    done
}

host() { hostname -s; }

# ---- munge -------------------------------------------------------------------------------------
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then return 0; fi
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 \
        || { tail -5 /var/log/munge/munged.log >&2; die "munged failed to start"; }
    : >"$DIR/munged.ours"
    wait_for munged munge_ok
}

# ---- MariaDB + slurmdbd ------------------------------------------------------------------------
# shellcheck disable=SC2120  # called with arguments through wait_for
db_sql() { mariadb --no-defaults -S "$DIR/mysqld.sock" -uroot "$@"; }

start_mariadb() {
    alive "$DIR/mysqld.pid" && return 0
    if [[ ! -d $DIR/mysql/mysql ]]; then
        rm -rf "$DIR/mysql"
        mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" \
            --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
            || { tail -20 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$DIR/mysqld.sock" \
        --pid-file="$DIR/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --skip-name-resolve --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=32M \
        --innodb-log-file-size=16M --performance-schema=OFF </dev/null >/dev/null 2>&1 &
    echo $! >"$DIR/mysqld.pid"  # now, not when mariadbd writes it, so that a failed start can stop it
    wait_for "mariadb (log $LOG/mariadb.log)" db_sql -e "select 1"
    db_sql <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
}

write_dbd_conf() {
    cat >"$DBD_CONF" <<EOF
$MARK; rewritten at each start
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$DIR/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
EOF
    chmod 0600 "$DBD_CONF"
}

dbd_ok() { sacctmgr -n -P show cluster format=cluster; }

start_slurmdbd() {
    alive "$DIR/slurmdbd.pid" && return 0
    slurmdbd </dev/null >>"$LOG/slurmdbd.log" 2>&1 || { show_logs >&2; die "slurmdbd failed to start"; }
    wait_for "slurmdbd (log $LOG/slurmdbd.log)" dbd_ok
}

# ---- slurm.conf, slurmctld, slurmd -------------------------------------------------------------
node_line() {
    local h; h=$(host)
    local detected; detected=$(slurmd -C | head -1)
    [[ $detected == NodeName=* ]] || die "slurmd -C gave: $detected"
    if [[ -n ${SLURM_LOCAL_CPUS:-} ]]; then
        local mem; mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
        echo "NodeName=$h NodeAddr=127.0.0.1 CPUs=$SLURM_LOCAL_CPUS RealMemory=$mem State=UNKNOWN"
    else
        # NodeName=<host> CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 ...
        echo "NodeName=$h NodeAddr=127.0.0.1 ${detected#NodeName=* } State=UNKNOWN"
    fi
}

write_conf() {
    local h; h=$(host)
    local acct
    if [[ $ACCOUNTING == 1 ]]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819"
    else
        acct="AccountingStorageType=accounting_storage/none"
    fi
    cat >"$CONF" <<EOF
$MARK; rewritten at each start
# A one-node cluster on this machine, without cgroups (see the script's comments).
ClusterName=$CLUSTER
SlurmctldHost=$h(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
MpiDefault=none
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$acct
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# look at pending jobs every 2 s (default 60/30 s), e.g. a requeued job once its BeginTime passes
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# quick test turnaround: SIGKILL 5 s after SIGTERM on cancel/requeue, forget jobs 5 min after end
KillWait=5
MinJobAge=300
InactiveLimit=0
${SLURM_LOCAL_CPUS:+SlurmdParameters=config_overrides}
$(node_line)
PartitionName=debug Nodes=$h Default=YES MaxTime=INFINITE State=UP
EOF
}

node_state() { sinfo -h -n "$(host)" -o %t 2>/dev/null; }

node_ready() {
    local s; s=$(node_state) || return 1
    [[ $s == idle || $s == mix || $s == alloc ]]
}

ours_running() {
    local p
    for p in slurmd slurmctld slurmdbd mysqld; do
        alive "$DIR/$p.pid" && return 0
    done
    return 1
}

cmd_start() {
    need_root
    [[ -z ${SLURM_LOCAL_CPUS:-} || $SLURM_LOCAL_CPUS =~ ^[1-9][0-9]*$ ]] \
        || die "SLURM_LOCAL_CPUS must be a positive integer, not '$SLURM_LOCAL_CPUS'"
    installed || cmd_install
    if [[ -e $CONF ]] && [[ $(head -1 "$CONF") != "$MARK"* ]]; then
        die "$CONF exists and was not written by this script; not touching it"
    fi
    mkdir -p "$DIR"
    local fresh=0
    if ! ours_running; then
        # a fresh cluster: no jobs or accounting records left from an earlier start
        fresh=1
        rm -rf "$DIR/ctld" "$DIR/d" "$DIR/mysql" "$LOG"
        rm -f "$DIR"/*.pid "$DIR/mysqld.sock"
    fi
    mkdir -p "$DIR/ctld" "$DIR/d" "$LOG"
    # a start that fails half way stops what it started, leaving no daemon behind
    (( fresh )) && trap 'rc=$?; if (( rc )); then cmd_stop >&2; fi; exit $rc' EXIT
    local t0=$SECONDS
    start_munge
    if [[ $ACCOUNTING == 1 ]]; then
        [[ $fresh == 0 && -e $DBD_CONF ]] || write_dbd_conf
        start_mariadb
        [[ $fresh == 0 && -e $CONF ]] || write_conf  # before slurmdbd: sacctmgr reads slurm.conf
        start_slurmdbd
    else
        [[ $fresh == 0 && -e $CONF ]] || write_conf
    fi
    if ! alive "$DIR/slurmctld.pid"; then
        slurmctld </dev/null >>"$LOG/slurmctld.log" 2>&1 || { show_logs >&2; die "slurmctld failed"; }
    fi
    wait_for "slurmctld (log $LOG/slurmctld.log)" scontrol ping
    if ! alive "$DIR/slurmd.pid"; then
        slurmd </dev/null >>"$LOG/slurmd.log" 2>&1 || { show_logs >&2; die "slurmd failed"; }
    fi
    wait_for "node $(host) to be idle (state: $(node_state || true))" node_ready
    if [[ $ACCOUNTING == 1 ]]; then
        wait_for "cluster $CLUSTER to register in slurmdbd" \
            bash -c "sacctmgr -n -P show cluster format=cluster | grep -qx $CLUSTER"
    fi
    trap - EXIT
    say "up in $((SECONDS - t0)) s: node $(host) $(node_state), partition debug; logs in $LOG"
}

# ---- stop, status ------------------------------------------------------------------------------
stop_pidfiles() {  # stop_pidfiles NAME=PIDFILE...: SIGTERM all, wait up to 15 s, then SIGKILL
    local arg name f pid
    local -A pids=()
    for arg in "$@"; do
        name=${arg%%=*} f=${arg#*=}
        if alive "$f"; then
            pid=$(cat "$f")
            pids[$name]=$pid
            kill -TERM "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
    for _ in $(seq 60); do
        for name in "${!pids[@]}"; do
            if ! kill -0 "${pids[$name]}" 2>/dev/null; then
                echo "slurm_local: stopped $name"
                unset "pids[$name]"
            fi
        done
        (( ${#pids[@]} )) || return 0
        sleep 0.25
    done
    for name in "${!pids[@]}"; do
        echo "slurm_local: $name (${pids[$name]}) ignored SIGTERM for 15 s; killing" >&2
        kill -KILL "${pids[$name]}" 2>/dev/null || true
    done
}

cmd_stop() {
    need_root
    if alive "$DIR/slurmctld.pid"; then
        local jobs; jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            say "cancelling jobs $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 40); do
                [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_pidfiles slurmd="$DIR/slurmd.pid" slurmctld="$DIR/slurmctld.pid" \
        slurmdbd="$DIR/slurmdbd.pid" mariadb="$DIR/mysqld.pid"
    # munged last: the others use it up to their end. Only if this script started it.
    if [[ -e $DIR/munged.ours ]]; then
        stop_pidfiles munged=/run/munge/munged.pid
        rm -f "$DIR/munged.ours"
    fi
    say "stopped"
}

cmd_status() {
    local rc=0 p
    for p in slurmctld slurmd; do
        if alive "$DIR/$p.pid"; then echo "$p: running ($(cat "$DIR/$p.pid"))"
        else echo "$p: not running"; rc=3; fi
    done
    if [[ $ACCOUNTING == 1 ]]; then
        for p in slurmdbd mysqld; do
            if alive "$DIR/$p.pid"; then echo "$p: running ($(cat "$DIR/$p.pid"))"
            else echo "$p: not running"; rc=3; fi
        done
    fi
    if munge_ok; then echo "munged: running"; else echo "munged: not running"; rc=3; fi
    (( rc == 0 )) && sinfo
    return $rc
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    logs) show_logs ;;
    *) echo "usage: $0 install|start|stop|status|logs" >&2; exit 2 ;;
esac
