#!/usr/bin/env bash
# A throwaway Slurm cluster on this machine, for testing the sbatch scripts (tests/test_slurm.py).
#
#   bash scripts/slurm_local_cluster.sh start [DIR]    # install if missing, start, wait until idle
#   export SLURM_CONF=DIR/etc/slurm.conf              # (start prints this line)
#   sbatch ...; squeue; sinfo; scontrol show job N
#   bash scripts/slurm_local_cluster.sh status [DIR]
#   bash scripts/slurm_local_cluster.sh install        # only install the packages if missing
#   bash scripts/slurm_local_cluster.sh stop [DIR]     # cancel jobs, stop the daemons, remove DIR
#
# DIR defaults to $SODA_SLURM_DIR or /tmp/soda-slurm.  Everything lives under DIR: slurm.conf, a
# private munge key and socket, state, spool, logs and pid files; nothing is written to
# /etc/slurm or /etc/munge.  The only change outside DIR is one line in /etc/hosts making the
# node names resolve to 127.0.0.1 (removed by stop), and, when Slurm or munge is missing,
# `apt-get install slurmctld slurmd slurm-client munge`.
#
# The cluster: one munged (run as the munge user), one slurmctld and SODA_SLURM_NODES (default 2)
# slurmd daemons started with `slurmd -N <node>` on their own ports, so one machine emulates a
# multi-node allocation.  No systemd, no cgroups (proctrack/linuxproc, task/none), no accounting
# (sacct does not work: read job states with `scontrol show job` while the job is known, i.e.
# for MinJobAge = 600 s after it ends).  AuthInfo cred_expire=5 (the smallest value Slurm 22.05
# accepts) and a 2 s scheduling interval let a requeued job start again ~7 s later instead of
# ~2 min.  Each node advertises SODA_SLURM_CPUS (default 4) CPUs whatever the machine has
# (SlurmdParameters=config_overrides).
#
# stop kills only the PIDs recorded in DIR's pid files (after checking that each one still runs
# the expected daemon), never processes found by name.
#
# Environment: SODA_SLURM_DIR, SODA_SLURM_NODES (2), SODA_SLURM_CPUS (4), SODA_SLURM_PORT
# (base port, default 16817: slurmctld on it, slurmd i on PORT+i), SODA_SLURM_NODE_PREFIX
# (soda-n: nodes soda-n1, soda-n2, ...), SODA_SLURM_TIMEOUT (seconds to wait, default 60),
# SODA_SLURM_CRED_EXPIRE (5), SODA_SLURM_FIRST_JOB_ID (random in 1000..8999).
set -euo pipefail

CMD=${1:-}
DIR=${2:-${SODA_SLURM_DIR:-/tmp/soda-slurm}}
[[ $DIR == /* ]] || DIR=$PWD/$DIR
NODES=${SODA_SLURM_NODES:-2}
CPUS=${SODA_SLURM_CPUS:-4}
PORT=${SODA_SLURM_PORT:-16817}
PREFIX=${SODA_SLURM_NODE_PREFIX:-soda-n}
TIMEOUT=${SODA_SLURM_TIMEOUT:-60}
CRED_EXPIRE=${SODA_SLURM_CRED_EXPIRE:-5}
FIRST_JOB_ID=${SODA_SLURM_FIRST_JOB_ID:-$((1000 + RANDOM % 8000))}
HOSTS_TAG="# soda-slurm-local-cluster"

CONF=$DIR/etc/slurm.conf
MUNGE_DIR=$DIR/munge
SOCKET=$MUNGE_DIR/munge.socket
RUN=$DIR/run
LOG=$DIR/log

die() { echo "slurm_local_cluster: error: $*" >&2; exit 1; }
say() { echo "slurm_local_cluster: $*" >&2; }

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

node_names() { local i; for ((i = 1; i <= NODES; i++)); do echo "$PREFIX$i"; done; }

# ---------------------------------------------------------------------------------------------
# installation

need_root() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd/slurmctld run as root here; munged as the munge user)"
}

have_tools() {
  local t
  for t in munged slurmctld slurmd sinfo sbatch scontrol squeue scancel srun runuser; do
    command -v "$t" >/dev/null 2>&1 || return 1
  done
}

install_tools() {
  have_tools && return 0
  command -v apt-get >/dev/null 2>&1 || die "Slurm/munge are not installed and apt-get is not available: install slurmctld, slurmd, slurm-client and munge"
  say "installing slurmctld slurmd slurm-client munge (apt-get)"
  local pkgs=(slurmctld slurmd slurm-client munge)
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"/tmp/soda-slurm-apt.$$.log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"/tmp/soda-slurm-apt.$$.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"/tmp/soda-slurm-apt.$$.log" 2>&1 \
      || die "apt-get install ${pkgs[*]} failed; see /tmp/soda-slurm-apt.$$.log"
  fi
  rm -f "/tmp/soda-slurm-apt.$$.log"
  have_tools || die "installed, but munged/slurmctld/slurmd/sinfo/... are still not on PATH"
}

# ---------------------------------------------------------------------------------------------
# pid files: only processes we started, checked before they are signalled

# pid_of NAME PROGRAM: the live PID recorded in $RUN/NAME.pid (or munged's pid file) if it still
# runs PROGRAM; nothing otherwise.
pid_of() {
  local file=$1 prog=$2 pid cmd
  [[ -s $file ]] || return 0
  pid=$(tr -dc '0-9' <"$file")
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 0
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  [[ $cmd == *"$prog"* ]] || return 0
  echo "$pid"
}

daemons() {  # "pidfile program" per daemon we start, in stop order
  local n
  for n in $(node_names); do echo "$RUN/slurmd-$n.pid slurmd"; done
  echo "$RUN/slurmctld.pid slurmctld"
  echo "$MUNGE_DIR/munged.pid munged"
}

running_pids() {
  local file prog pid
  while read -r file prog; do
    pid=$(pid_of "$file" "$prog")
    [[ -n $pid ]] && echo "$pid"
  done < <(daemons)
  return 0
}

stop_pid() {  # TERM, wait up to 10 s, then KILL
  local pid=$1 name=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  say "$name (pid $pid) did not stop on SIGTERM: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# configuration

hosts_add() {  # our own tagged line (even if the names resolve: another instance may remove its own)
  grep -qF "$HOSTS_TAG $DIR" /etc/hosts 2>/dev/null && return 0
  # in place (no rename): /etc/hosts is often a bind mount inside containers
  echo "127.0.0.1 $(node_names | tr '\n' ' ')$HOSTS_TAG $DIR" >>/etc/hosts || die "cannot add node names to /etc/hosts"
}

hosts_remove() {
  grep -qF "$HOSTS_TAG $DIR" /etc/hosts 2>/dev/null || return 0
  local kept
  kept=$(grep -vF "$HOSTS_TAG $DIR" /etc/hosts || true)
  printf '%s\n' "$kept" >/etc/hosts
}

write_conf() {
  local host i n
  host=$(hostname -s)
  mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$RUN" "$LOG"
  {
    echo "# written by scripts/slurm_local_cluster.sh: a test cluster, not for production"
    echo "ClusterName=soda-local"
    echo "SlurmctldHost=$host(127.0.0.1)"
    echo "SlurmctldPort=$PORT"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$SOCKET,cred_expire=$CRED_EXPIRE"
    echo "StateSaveLocation=$DIR/state"
    echo "SlurmdSpoolDir=$DIR/spool/%n"
    echo "SlurmctldPidFile=$RUN/slurmctld.pid"
    echo "SlurmdPidFile=$RUN/slurmd-%n.pid"
    echo "SlurmctldLogFile=$LOG/slurmctld.log"
    echo "SlurmdLogFile=$LOG/slurmd-%n.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_CPU"
    echo "SchedulerType=sched/backfill"
    echo "SchedulerParameters=sched_interval=2,bf_interval=1"  # requeued jobs start as soon as eligible
    echo "SlurmdParameters=config_overrides"
    echo "MpiDefault=none"
    echo "SwitchType=switch/none"
    echo "ReturnToService=2"
    echo "MailProg=/bin/true"
    echo "KillWait=5"
    echo "MinJobAge=600"
    echo "FirstJobId=$FIRST_JOB_ID"  # random: jobs of two local clusters get different ids (and ports)
    echo "InactiveLimit=0"
    echo "SlurmctldDebug=info"
    echo "SlurmdDebug=info"
    i=0
    for n in $(node_names); do
      i=$((i + 1))
      echo "NodeName=$n NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + i)) CPUs=$CPUS RealMemory=4096 State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF"
}

# ---------------------------------------------------------------------------------------------
# start / stop

start_munge() {
  [[ -n $(pid_of "$MUNGE_DIR/munged.pid" munged) ]] && return 0
  id munge >/dev/null 2>&1 || die "no 'munge' user (is the munge package installed?)"
  mkdir -p "$MUNGE_DIR"
  chown munge:munge "$MUNGE_DIR"
  chmod 0700 "$MUNGE_DIR"
  if [[ ! -s $MUNGE_DIR/munge.key ]]; then
    (umask 077; head -c 1024 /dev/urandom >"$MUNGE_DIR/munge.key")
    chown munge:munge "$MUNGE_DIR/munge.key"
  fi
  rm -f "$SOCKET" "$SOCKET.lock"
  runuser -u munge -- munged --force --key-file="$MUNGE_DIR/munge.key" --socket="$SOCKET" \
    --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" \
    || die "munged did not start; see $MUNGE_DIR/munged.log"
  local i
  for ((i = 0; i < 50; i++)); do
    munge -n --socket="$SOCKET" 2>/dev/null | unmunge --socket="$SOCKET" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged started but does not answer on $SOCKET; see $MUNGE_DIR/munged.log"
}

wait_idle() {
  local deadline=$((SECONDS + TIMEOUT)) states want
  want=$(node_names | sort | sed 's/$/ idle/')
  while ((SECONDS < deadline)); do
    states=$(SLURM_CONF=$CONF sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)
    [[ $states == "$want" ]] && return 0
    sleep 0.3
  done
  say "nodes not idle after ${TIMEOUT}s; sinfo says:"
  SLURM_CONF=$CONF sinfo -N -l >&2 || true
  local f
  for f in "$LOG"/*.log; do
    [[ -f $f ]] || continue
    echo "---- tail $f" >&2
    tail -n 15 "$f" >&2
  done
  return 1
}

cmd_start() {
  need_root
  install_tools
  if [[ -f $CONF ]] && [[ -n $(pid_of "$RUN/slurmctld.pid" slurmctld) ]] && wait_idle_quiet; then
    say "already running ($DIR)"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  # a half-started or crashed earlier instance: stop what is left of it, keep nothing
  if [[ -n $(running_pids) ]]; then cmd_stop_daemons; fi
  rm -rf "$DIR/state" "$DIR/spool" "$RUN"
  hosts_add
  write_conf
  start_munge
  local n
  SLURM_CONF=$CONF slurmctld -f "$CONF" -i \
    || die "slurmctld did not start; see $LOG/slurmctld.log"
  for n in $(node_names); do
    mkdir -p "$DIR/spool/$n"
    SLURM_CONF=$CONF slurmd -f "$CONF" -N "$n" \
      || die "slurmd -N $n did not start; see $LOG/slurmd-$n.log"
  done
  if ! wait_idle; then
    cmd_stop_daemons
    die "the cluster did not come up; logs are in $LOG"
  fi
  say "up: $(node_names | tr '\n' ' ')($CPUS CPUs each), state in $DIR"
  echo "export SLURM_CONF=$CONF"
}

wait_idle_quiet() {
  local states want
  want=$(node_names | sort | sed 's/$/ idle/')
  states=$(SLURM_CONF=$CONF timeout 10 sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)
  [[ $states == "$want" ]]
}

cancel_jobs() {
  [[ -f $CONF && -n $(pid_of "$RUN/slurmctld.pid" slurmctld) ]] || return 0
  local jobs i
  jobs=$(SLURM_CONF=$CONF timeout 10 squeue -h -o '%A' 2>/dev/null || true)
  [[ -n $jobs ]] || return 0
  say "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
  # shellcheck disable=SC2086  # one job id per word
  SLURM_CONF=$CONF scancel $jobs 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do  # until every job step (slurmstepd and its tasks) is gone
    jobs=$(SLURM_CONF=$CONF timeout 10 squeue -h -t R,CG,S -o '%A' 2>/dev/null || true)
    [[ -z $jobs ]] && return 0
    sleep 0.2
  done
  say "jobs still ending after 20 s: $jobs"
}

cmd_stop_daemons() {  # the slurm daemons together, then munged (they talk to it while stopping)
  local file prog pid pids=() names=() i
  while read -r file prog; do
    pid=$(pid_of "$file" "$prog")
    [[ -n $pid && $prog != munged ]] || continue
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid") && names+=("$prog")
  done < <(daemons)
  for ((i = 0; i < 100; i++)); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      say "${names[$i]} (pid ${pids[$i]}) did not stop on SIGTERM: SIGKILL"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
  pid=$(pid_of "$MUNGE_DIR/munged.pid" munged)
  if [[ -n $pid ]]; then stop_pid "$pid" munged; fi
}

cmd_stop() {
  need_root
  cancel_jobs
  cmd_stop_daemons
  hosts_remove
  if [[ -d $DIR ]]; then
    case $DIR in
      /|/tmp|/root|/home|"$HOME") die "refusing to remove $DIR" ;;
    esac
    if [[ ${SODA_SLURM_KEEP:-0} == 1 ]]; then
      say "stopped; kept $DIR (SODA_SLURM_KEEP=1)"
    else
      rm -rf "$DIR"
      say "stopped; removed $DIR"
    fi
  else
    say "nothing to stop in $DIR"
  fi
}

cmd_status() {
  local file prog pid rc=0
  while read -r file prog; do
    pid=$(pid_of "$file" "$prog")
    if [[ -n $pid ]]; then echo "$prog ${file##*/}: running (pid $pid)"; else echo "$prog ${file##*/}: not running"; rc=1; fi
  done < <(daemons)
  if [[ $rc == 0 ]]; then
    SLURM_CONF=$CONF sinfo -N || rc=1
    echo "export SLURM_CONF=$CONF"
  fi
  return $rc
}

[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "SODA_SLURM_NODES must be a positive integer"
case $CMD in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  install) need_root; install_tools; say "slurm and munge are installed" ;;
  *) usage ;;
esac
