#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (munged + slurmctld + slurmd), for tests.
# Idempotent: daemons already running are left alone. Waits until the node is idle, else prints
# the daemon logs and exits 1. Use `export SLURM_CONF=${SSR_SLURM_DIR:-/tmp/ssr-slurm}/slurm.conf`
# in shells that should talk to it (start.sh also links /etc/slurm/slurm.conf when that is free).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
source "$here/common.sh"
START_TIMEOUT_S="${SSR_SLURM_START_TIMEOUT_S:-60}"

for bin in munged mungekey slurmctld slurmd sinfo; do
    command -v "$bin" >/dev/null || { echo "slurm: '$bin' not found; run .ci/slurm/install.sh" >&2; exit 1; }
done
[[ $(id -u) -eq 0 ]] || { echo "slurm: start.sh must run as root (daemons, /run/munge)" >&2; exit 1; }

node=$(hostname -s)
mkdir -p "$SSR_SLURM_DIR"/{state,spool,log,run}

# --- slurm.conf: real CPU topology and memory as slurmd itself measures them ---
node_line=$(slurmd -C | grep '^NodeName=')
write_conf() {
    cat <<CONF
$SSR_SLURM_MARKER
ClusterName=ssr-local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
# cgroup-free, so it also runs inside containers without a delegated cgroup tree (like this sandbox).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerType=sched/backfill
# Start batch jobs on the next scheduler pass (~1 s) rather than after the default ~3 s delay.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=30
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=$SSR_SLURM_DIR/state
SlurmdSpoolDir=$SSR_SLURM_DIR/spool
SlurmctldPidFile=$SLURMCTLD_PIDFILE
SlurmdPidFile=$SLURMD_PIDFILE
SlurmctldLogFile=$SSR_SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SSR_SLURM_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$node_line NodeAddr=127.0.0.1 NodeHostname=$node State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1024
CONF
}
write_conf >"$SLURM_CONF_FILE.new"
if ! cmp -s "$SLURM_CONF_FILE.new" "$SLURM_CONF_FILE" 2>/dev/null; then
    mv "$SLURM_CONF_FILE.new" "$SLURM_CONF_FILE"
    conf_changed=1
else
    rm -f "$SLURM_CONF_FILE.new"
    conf_changed=0
fi

# Let plain `sinfo`/`sbatch` (no SLURM_CONF) find this cluster, unless a real cluster owns the path.
etc_conf=/etc/slurm/slurm.conf
if [[ ! -e $etc_conf && ! -L $etc_conf ]] || [[ $(readlink "$etc_conf" || true) == "$SLURM_CONF_FILE" ]] ||
    grep -qsF "$SSR_SLURM_MARKER" "$etc_conf"; then
    mkdir -p /etc/slurm
    ln -sfn "$SLURM_CONF_FILE" "$etc_conf"
else
    echo "slurm: $etc_conf belongs to another cluster; export SLURM_CONF=$SLURM_CONF_FILE to use this one"
fi

# --- munge ---
if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p "$MUNGE_SOCKET_DIR" /var/lib/munge /var/log/munge
    chown munge:munge "$MUNGE_SOCKET_DIR" /var/lib/munge /var/log/munge
    chmod 0755 "$MUNGE_SOCKET_DIR"
    runuser -u munge -- munged --pid-file="$MUNGE_PIDFILE"
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n </dev/null | unmunge >/dev/null || { echo "slurm: munged did not come up" >&2; exit 1; }
fi

# --- slurmctld / slurmd (both daemonize themselves and write their pid files) ---
if [[ $conf_changed -eq 1 && -n $(live_pid "$SLURMCTLD_PIDFILE")$(live_pid "$SLURMD_PIDFILE") ]]; then
    echo "slurm: config changed, restarting slurmctld and slurmd"
    SSR_SLURM_KEEP_MUNGE=1 "$here/stop.sh"
fi
[[ -n $(live_pid "$SLURMCTLD_PIDFILE") ]] || slurmctld -f "$SLURM_CONF_FILE"
[[ -n $(live_pid "$SLURMD_PIDFILE") ]] || slurmd -f "$SLURM_CONF_FILE"

# --- wait for the node to be schedulable ---
deadline=$((SECONDS + START_TIMEOUT_S))
state=""
while ((SECONDS < deadline)); do
    # `scontrol show slurmd` asks the local slurmd itself: the node's saved state alone can read
    # "idle" before slurmd has registered.
    if ! scontrol show slurmd >/dev/null 2>&1; then
        state="slurmd not answering"
        sleep 0.2
        continue
    fi
    state=$(sinfo -h -N -n "$node" -o '%T' 2>/dev/null | head -1 || true)
    case $state in
        idle | mixed | allocated) break ;;
        down* | drain* | fail*)
            # A node left down from an earlier run (e.g. an unclean stop) is brought back.
            scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
done
case $state in
    idle | mixed | allocated)
        echo "slurm: cluster up (node $node $state, SLURM_CONF=$SLURM_CONF_FILE)" ;;
    *)
        echo "slurm: node $node not idle after ${START_TIMEOUT_S}s (state: '${state:-unknown}')" >&2
        sinfo -N -l >&2 || true
        for log in "$SSR_SLURM_DIR"/log/*.log; do
            echo "----- $log (tail) -----" >&2
            tail -n 40 "$log" >&2
        done
        exit 1 ;;
esac
