#!/usr/bin/env bash
# Install a single-node SLURM cluster's packages (Debian): slurmctld, slurmd, the client tools, munge.
# Idempotent: does nothing when every binary is already there. Needs root (or passwordless sudo).
set -euo pipefail

needed=(sinfo srun sbatch slurmctld slurmd munged mungekey)
version() { dpkg-query -W -f='${Version}' slurmctld 2>/dev/null || echo unknown; }
missing=()
for bin in "${needed[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || [[ -x "/usr/sbin/$bin" ]] || missing+=("$bin")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "slurm: already installed (slurm $(version))"
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "slurm: install needs root (missing: ${missing[*]})" >&2; exit 1; }
    SUDO="sudo"
fi

echo "slurm: installing (missing: ${missing[*]})"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>"${TMPDIR:-/tmp}/ssr-slurm-apt.err" ||
    { cat "${TMPDIR:-/tmp}/ssr-slurm-apt.err" >&2; exit 1; }
echo "slurm: installed (slurm $(version))"
