#!/usr/bin/env bash
# Stop the local SLURM test cluster started by start.sh: slurmd, slurmctld, then munged.
# Idempotent; waits for each daemon to exit (SIGKILL after a grace period) so none is left behind.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
source "$here/common.sh"

stop_pidfile() {
    local name=$1 pidfile=$2 pid
    pid=$(live_pid "$pidfile")
    if [[ -z $pid ]]; then
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "slurm: $name ($pid) ignored SIGTERM, killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    echo "slurm: stopped $name ($pid)"
}

# Cancel what is still queued or running and give it a moment to end, so no job step outlives slurmd.
if [[ -n $(live_pid "$SLURMCTLD_PIDFILE") ]]; then
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 50); do
        [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.2
    done
fi
stop_pidfile slurmd "$SLURMD_PIDFILE" &
stop_pidfile slurmctld "$SLURMCTLD_PIDFILE" &
wait
[[ -n ${SSR_SLURM_KEEP_MUNGE:-} ]] || stop_pidfile munged "$MUNGE_PIDFILE"
