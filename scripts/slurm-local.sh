#!/usr/bin/env bash
# A real single-node SLURM on localhost (munge + slurmctld + slurmd), for the tests, CI and for
# trying `snakemake --profile slurm --profile profiles/local-slurm` on a laptop.
#
#   scripts/slurm-local.sh install   Debian/Ubuntu packages (root)
#   scripts/slurm-local.sh start     write the config, start the daemons, wait until idle
#   scripts/slurm-local.sh status    sinfo + squeue
#   scripts/slurm-local.sh stop      stop the daemons by their PID files, remove the config links
#
# Everything (config, spool, state, logs, PID files) lives under one folder, SVT_SLURM_DIR
# (default /var/tmp/svt-slurm). The node declares SVT_SLURM_GPUS dummy GPUs (default 2) so the
# production `--gpus` / `--gres=gpu:N` requests are what gets submitted. Needs root: SLURM runs
# jobs as the submitting user, and munge must run as its own user.
set -euo pipefail

BASE=${SVT_SLURM_DIR:-/var/tmp/svt-slurm}
GPUS=${SVT_SLURM_GPUS:-2}
CPUS=${SVT_SLURM_CPUS:-}   # CPUs the node declares; default max(nproc, 4) (see config_overrides)
ETC=/etc/slurm          # the jobstep plugin drops SLURM_CONF, so the config must be found here
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "slurm-local: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (it starts munged, slurmctld and slurmd)"
}

install_packages() {
  need_root
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
     && command -v sbatch >/dev/null; then
    echo "slurm-local: packages already installed"; return
  fi
  command -v apt-get >/dev/null || die "apt-get not found: install ${PACKAGES[*]} with your package manager"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
}

running() {  # running <pidfile>
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

link() {  # link <file in BASE> <name in ETC>: refuse to replace someone else's config
  local target=$ETC/$2
  if [ -e "$target" ] && [ ! -L "$target" ]; then
    die "$target exists and is not ours; remove it or use that cluster instead"
  fi
  ln -sfn "$BASE/$1" "$target"
}

write_config() {
  local cpus mem_mb gpu_files=""
  cpus=${CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  mkdir -p "$BASE"/{spool/slurmd,spool/ctld,log,run,gpu}
  for ((i = 0; i < GPUS; i++)); do touch "$BASE/gpu/nvidia$i"; done
  [ "$GPUS" -gt 0 ] && gpu_files="$BASE/gpu/nvidia[0-$((GPUS - 1))]"
  cat > "$BASE/slurm.conf" <<EOF
# Written by scripts/slurm-local.sh: one node on localhost, no cgroups, no accounting.
ClusterName=svt-local
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$BASE/spool/ctld
SlurmdSpoolDir=$BASE/spool/slurmd
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=3600
MailProg=/bin/true
# Trust the CPU count below even when it exceeds the machine's: a 2-core CI box can then run a
# job asking for 3 CPUs (a demo training process and its 2 loader workers) as a real cluster would.
SlurmdParameters=config_overrides
KillWait=10
SchedulerType=sched/backfill
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb ${gpu_files:+Gres=gpu:$GPUS} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  if [ -n "$gpu_files" ]; then
    echo "NodeName=localhost Name=gpu File=$gpu_files" > "$BASE/gres.conf"
  else
    : > "$BASE/gres.conf"
  fi
}

start() {
  need_root
  command -v slurmctld >/dev/null || die "SLURM is not installed: run '$0 install' first"
  if running "$BASE/run/slurmctld.pid"; then echo "slurm-local: already running"; return; fi
  write_config
  mkdir -p "$ETC"
  link slurm.conf slurm.conf
  link gres.conf gres.conf

  # munge: its own user, key 0400, socket folder under /run.
  install -d -o munge -g munge -m 0755 /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 "$BASE/munge"  # munged's PID file and log
  if ! running "$BASE/munge/munged.pid"; then
    runuser -u munge -- munged --pid-file="$BASE/munge/munged.pid" --log-file="$BASE/munge/munged.log"
  fi

  slurmctld -c -i
  slurmd -N localhost
  for _ in $(seq 60); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
    case $state in idle | mixed | allocated) echo "slurm-local: up (node $state, $GPUS dummy GPUs, $BASE)"; return ;; esac
    sleep 0.5
  done
  echo "slurm-local: the node did not become idle; logs:" >&2
  tail -n 20 "$BASE"/log/slurm*.log >&2 || true
  stop
  exit 1
}

stop_pid() {  # stop_pid <name> <pidfile>: TERM, wait up to 10 s, then KILL
  local pidfile=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { echo "slurm-local: $1 ignored TERM, killing" >&2; kill -KILL "$pid"; }
  fi
  rm -f "$pidfile"
}

stop() {
  need_root
  stop_pid slurmd "$BASE/run/slurmd.pid"
  stop_pid slurmctld "$BASE/run/slurmctld.pid"
  stop_pid munged "$BASE/munge/munged.pid"
  # A config left behind while the daemons are down makes every snakemake call stall ~10 s.
  for name in slurm.conf gres.conf; do
    if [ -L "$ETC/$name" ] && [ "$(readlink "$ETC/$name")" = "$BASE/$name" ]; then rm -f "$ETC/$name"; fi
  done
  echo "slurm-local: stopped"
}

status() {
  running "$BASE/run/slurmctld.pid" || { echo "slurm-local: not running"; return 1; }
  sinfo
  squeue
}

case ${1:-} in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|status|stop" >&2; exit 2 ;;
esac
