# shellcheck shell=bash
# Submitting dist/slurm/sn_train.sbatch to the test cluster and following its jobs. Sourced by the
# tests of tests/slurm/ (it sources cluster.sh and tiny_run.sh's same_run), after tests/test_env.sh's
# sn_test_env (SRC, BUILD, WORK as the current folder):
#
#   source "$SRC/tests/slurm/jobs.sh"
#   slurm_test_begin   # skip (77) or: the cluster up in WORK/cluster
source "$SRC/tests/slurm/cluster.sh"
source "$SRC/tests/cpu/tiny_run.sh"  # same_run

SLURM_JOB_POLL_S=0.2

# Skips the test (exit 77) where it cannot run; else starts the cluster in WORK/cluster. At exit
# the cluster stops, then WORK goes (sn_test_env's cleanup), whatever happened.
slurm_test_begin() {
  slurm_cluster_check
  sn_test_needs_python numpy safetensors
  slurm_cluster_start "$WORK/cluster"
}

# job_config STEPS1 STEPS2: training data in data/ and cfg.json: tiny towers, one thread a rank, a
# communicator timeout well below the test's, and no periodic checkpoint within the run (a
# checkpoint that a job resumes from was written when it was stopped; --set checkpoint.every=N
# to have them).
job_config() {
  python3 "$SRC/tests/synth_data.py" data --examples 72 --test-queries 4 > /dev/null
  cat > cfg.json <<JSON
{"seed": 9, "threads": 1, "comm_timeout_s": 60,
 "data": {"train": ["data/train.jsonl"], "max_query_len": 12, "max_doc_len": 20},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
                           "intermediate": 64, "vocab": 4096},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "batch_queries": 12, "negatives_per_query": 1, "steps": $1, "optim": {"lr": 1e-3, "warmup_steps": 1}},
 "stage2": {"student_desc": {"arch": "bert", "layers": 1, "hidden": 16, "heads": 2, "intermediate": 32,
                             "vocab": 4096, "max_positions": 64},
            "tokenizer": "$SRC/configs/default/student/tokenizer.json",
            "batch_queries": 12, "steps": $2, "optim": {"lr": 1e-3, "warmup_steps": 1}},
 "checkpoint": {"every": 100000, "keep": 2}}
JSON
}

# submit_job NAME [sbatch options] [-- sn_train arguments]: the real sn_train.sbatch, its GPU
# defaults overridden by sbatch options (one node, 2 tasks, 1 CPU each, no GRES), the CPU backend,
# run folder NAME, log NAME-JOBID.out. Prints the job id (also kept in NAME.id).
submit_job() {
  local name=$1 id
  shift
  local options=()
  while (($#)) && [[ $1 != -- ]]; do
    options+=("$1")
    shift
  done
  (($#)) && shift  # the --
  id=$(SN_TRAIN="$BUILD/sn_train" OMP_NUM_THREADS=1 \
    sbatch --parsable --job-name="$name" --chdir="$PWD" --output="$PWD/%x-%j.out" \
      --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gres=none --time=10 "${options[@]}" \
      "$SRC/dist/slurm/sn_train.sbatch" cfg.json --set device=cpu --set run_dir="$name" "$@")
  echo "$id" > "$name.id"
  echo "$id"
}

job_id_of() { cat "$1.id"; }

# job_field ID FIELD: a field of `scontrol show job` (JobState, Restarts, StdOut, …).
job_field() { scontrol show job -o "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

job_log() { job_field "$1" StdOut; }

# wait_job ID TIMEOUT_S: until the job has left the queue for good (requeues included). Returns 1
# with a message on timeout.
wait_job() {
  local deadline=$((SECONDS + $2))
  while squeue -h -j "$1" 2>/dev/null | grep -q .; do
    if ((SECONDS >= deadline)); then
      echo "FAIL: job $1 still queued after $2 s: $(squeue -h -j "$1" -o '%T %r')"
      return 1
    fi
    sleep "$SLURM_JOB_POLL_S"
  done
}

# expect_job ID STATE RESTARTS: the job's final state and how many times it was requeued.
expect_job() {
  local state restarts
  state=$(job_field "$1" JobState)
  restarts=$(job_field "$1" Restarts)
  [[ $state == "$2" && $restarts == "$3" ]] && return 0
  echo "FAIL: job $1 ($(job_field "$1" JobName)) ended $state after $restarts requeues; expected $2 after $3" \
       "(reason $(job_field "$1" Reason), exit code $(job_field "$1" ExitCode))"
  return 1
}

# wait_for_steps NAME ID N: until run folder NAME has logged N steps (the job is mid-run); 1 if the
# job ends first or within a minute nothing comes.
wait_for_steps() {
  local deadline=$((SECONDS + 60)) lines
  while :; do
    lines=$(metrics_lines "$1")
    ((lines >= $3)) && return 0
    if ! squeue -h -j "$2" 2>/dev/null | grep -q . || ((SECONDS >= deadline)); then
      echo "FAIL: $1: job $2 has logged $lines steps, not $3, and $(squeue -h -j "$2" -o %T 2>/dev/null || echo ended)"
      return 1
    fi
    sleep "$SLURM_JOB_POLL_S"
  done
}

# metrics_lines NAME: the steps run folder NAME has logged so far.
metrics_lines() { if [[ -f $1/metrics.jsonl ]]; then wc -l < "$1/metrics.jsonl"; else echo 0; fi; }

# two_ranks NAME [sn_train arguments]: the config on 2 ranks outside Slurm (RANK/WORLD_SIZE, the
# same TCP communicator), run folder NAME: the uninterrupted run the preempted jobs must equal.
two_ranks() {
  local name=$1 port=$((30000 + $$ % 10000)) rank pids=()
  shift
  for rank in 0 1; do
    RANK=$rank WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 \
      "$BUILD/sn_train" --config cfg.json --set run_dir="$name" "$@" 2> "$name-$rank.log" &
    pids+=($!)
  done
  local status=0
  wait "${pids[0]}" || status=1
  wait "${pids[1]}" || status=1
  [[ $status == 0 ]] || tail "$name"-*.log
  return $status
}
