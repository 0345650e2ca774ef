# shellcheck shell=bash
# A one-host Slurm cluster for the tests: munged, slurmctld and slurmd started directly (no
# systemd), every state, spool, log and socket file under one folder, stopped at exit whatever
# happens (tests/test_env.sh's sn_test_on_exit). Sourced by the tests of tests/slurm/ after
# sn_test_env, never run on its own:
#
#   source tests/slurm/cluster.sh
#   slurm_cluster_start "$WORK/cluster"   # exits 77 when Slurm is not installed
#   sbatch ...                            # SLURM_CONF points at the generated slurm.conf
#
# The node is this machine (its short host name), with the CPUs and memory it has, no GPUs.
# cgroups may be missing in a container: processes are tracked by process group
# (proctrack/pgid) and tasks are not bound (task/none).

SLURM_CLUSTER_START_TIMEOUT_S=60   # until the node is idle
SLURM_CLUSTER_CRED_EXPIRE_S=5    # a requeued job may start again after this (Slurm's default: 120)
SLURM_CLUSTER_STOP_WAIT_S=10       # a daemon that ignores SIGTERM this long gets SIGKILL

slurm_cluster_pids=()

# Jobs still queued or running are cancelled first (their tasks and slurmstepd must not outlive
# the cluster); then every daemon we started gets SIGTERM, and SIGKILL if it lingers. Idempotent.
slurm_cluster_stop() {
  local pid waited jobs
  [[ -n ${SLURM_CLUSTER_DIR:-} ]] || return 0
  if [[ -s $SLURM_CLUSTER_DIR/slurmctld.pid ]]; then
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086  # one id a word
      scancel $jobs 2>/dev/null || true
      waited=0
      while squeue -h -o %i 2>/dev/null | grep -q . && ((waited < SLURM_CLUSTER_STOP_WAIT_S * 10)); do
        sleep 0.1
        waited=$((waited + 1))
      done
    fi
  fi
  for pidfile in "$SLURM_CLUSTER_DIR"/slurmd.pid "$SLURM_CLUSTER_DIR"/slurmctld.pid "$SLURM_CLUSTER_DIR"/munged.pid; do
    [[ -s $pidfile ]] || continue
    slurm_cluster_pids+=("$(cat "$pidfile")")
  done
  for pid in "${slurm_cluster_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${slurm_cluster_pids[@]}"; do
    waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited < SLURM_CLUSTER_STOP_WAIT_S * 10)); do
      sleep 0.1
      waited=$((waited + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  slurm_cluster_pids=()
}

# Prints the daemons' logs (on failure: what Slurm said is the first thing to read).
slurm_cluster_logs() {
  local f
  for f in "$SLURM_CLUSTER_DIR"/log/*.log; do
    [[ -s $f ]] || continue
    echo "---- $f (last 40 lines)"
    tail -n 40 "$f"
  done
}

slurm_cluster_fail() {
  echo "FAIL: $*" >&2
  slurm_cluster_logs >&2
  exit 1
}

# Exits 77 (the test is skipped) where the cluster cannot run: Slurm or munge not installed, or
# not root. Call it before making anything that a skip would leave behind.
slurm_cluster_check() {
  local bin
  for bin in munged slurmctld slurmd sbatch squeue scontrol scancel sinfo; do
    if ! command -v "$bin" >/dev/null; then
      echo "SKIP: $bin not found (install Debian's munge slurmctld slurmd slurm-client)"
      exit 77
    fi
  done
  if [[ $(id -u) -ne 0 ]]; then
    echo "SKIP: the one-host Slurm cluster runs its daemons as root (SlurmUser=root)"
    exit 77
  fi
  # The daemons and the job's rendezvous (MASTER_ADDR is the node's name) look the name up.
  if ! getent hosts "$(hostname -s)" >/dev/null; then
    echo "SKIP: this host's name '$(hostname -s)' does not resolve (add it to /etc/hosts)"
    exit 77
  fi
}

# slurm_cluster_start DIR: writes munge.key and slurm.conf into DIR, starts the three daemons and
# waits until the node is idle. Stops them at exit (sn_test_on_exit: before the test's WORK goes).
slurm_cluster_start() {
  SLURM_CLUSTER_DIR=$1
  slurm_cluster_check
  sn_test_on_exit slurm_cluster_stop
  trap 'exit 143' TERM  # ctest's timeout: exit, so that the EXIT trap stops the daemons
  trap 'exit 130' INT
  local d=$SLURM_CLUSTER_DIR
  mkdir -p "$d"/{log,state,spool,munge}
  chmod 755 "$d"/munge  # munged wants its socket folder searchable by all; the key stays 0400

  # munge: a fresh key, its socket beside it (slurm.conf's AuthInfo names the socket)
  head -c 1024 /dev/urandom >"$d"/munge/munge.key
  chmod 400 "$d"/munge/munge.key
  munged --force --key-file="$d"/munge/munge.key --socket="$d"/munge/munge.socket \
    --pid-file="$d"/munged.pid --log-file="$d"/log/munged.log --seed-file="$d"/munge/seed \
    || slurm_cluster_fail "munged did not start"

  local node cpus mem_mb port_base
  node=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
  # Ports of our own, so that a Slurm already running on this machine is left alone.
  port_base=${SLURM_CLUSTER_PORT_BASE:-26817}
  cat >"$d"/slurm.conf <<CONF
ClusterName=sntest
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port_base
SlurmdPort=$((port_base + 1))
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$d/munge/munge.socket,cred_expire=$SLURM_CLUSTER_CRED_EXPIRE_S
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobRequeue=1
MpiDefault=none
ReturnToService=2
# Short timings: a test cluster, not a production one. MinJobAge keeps finished jobs visible to
# scontrol for a while; KillWait is the time between SIGTERM and SIGKILL when a job ends.
MinJobAge=300
KillWait=5
SlurmctldTimeout=10
SlurmdTimeout=10
InactiveLimit=0
Waittime=0
SchedulerParameters=sched_interval=1
NodeName=$node CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$d/slurm.conf
  SLURM_CLUSTER_STARTED_AT=$(date +%s.%N)  # slurmctld's periodic checks count from here
  slurmctld -f "$SLURM_CONF" >"$d"/log/slurmctld.out 2>&1 || slurm_cluster_fail "slurmctld did not start"
  slurmd -f "$SLURM_CONF" >"$d"/log/slurmd.out 2>&1 || slurm_cluster_fail "slurmd did not start"

  local waited=0 state=""
  while ((waited < SLURM_CLUSTER_START_TIMEOUT_S * 2)); do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n1 || true)
    [[ $state == idle ]] && break
    sleep 0.5
    waited=$((waited + 1))
  done
  [[ $state == idle ]] || slurm_cluster_fail "node $node is '$state', not idle, after ${SLURM_CLUSTER_START_TIMEOUT_S} s"
  echo "slurm cluster up: node $node, $cpus CPUs, ${mem_mb} MB, config $SLURM_CONF"
}
