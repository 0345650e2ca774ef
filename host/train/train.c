// sn_train's driver: config, run folder, backend and communicator, resume point, signals, the two
// stages and the evaluations around them; or stage 0 (pretraining), a run of its own.
#define _GNU_SOURCE
#include "train.h"

#include <errno.h>
#include <omp.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cJSON.h"
#include "common.h"
#include "eval.h"
#include "train_internal.h"

volatile sig_atomic_t sn_stop_requested = 0;

static void on_stop_signal(int sig) {
  (void)sig;
  sn_stop_requested = 1;
}

// SIGTERM/SIGINT (Ctrl-C, scancel) and SIGUSR1 (Slurm's --signal before preemption): finish the
// step, checkpoint, exit 0. A second SIGINT kills at once (SA_RESETHAND).
static void install_signal_handlers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
  sa.sa_flags = SA_RESETHAND;
  sigaction(SIGINT, &sa, NULL);
}

// Every rank of a multi-rank run says where it runs, one line each: which host, which local slot,
// which process (the job log of a multi-node run then shows the layout and whom to look at).
static void log_rank_placement(const sn_trainer *t) {
  if (t->world == 1) return;
  char host[256] = "?";
  if (gethostname(host, sizeof host) != 0) strcpy(host, "?");
  host[sizeof host - 1] = '\0';
  sn_log("sn_train: rank %d/%d on host %s, local rank %d/%d, pid %d (launcher %s, %s backend)", t->rank,
         t->world, host, t->comm->local_rank, t->comm->local_size, (int)getpid(), t->comm->launcher,
         sn_comm_backend_name(t->comm->backend));
}

// ---- evaluation ------------------------------------------------------------------------------

typedef struct {
  const char *name;  // file stem in RUN/eval/
  const char *label; // row label in the summary
} eval_row;

static const eval_row EVAL_ROWS[] = {
    {"untrained", "untrained towers"},
    {"stage1", "stage-1 towers (teacher)"},
    {"student", "student + stage-1 docs"},
    {"bm25", "BM25 (k1 0.9, b 0.4)"},
};

static void eval_result_path(const sn_trainer *t, const char *name, char *path, size_t size) {
  snprintf(path, size, "%s/eval/%s.json", t->run_dir, name);
}

// Ranks other than 0 wait for rank 0's evaluation (by its result file, not in a collective).
static void wait_for_eval(const sn_trainer *t, const char *name) {
  if (!t->cfg.eval.data[0] || t->rank == 0) return;
  char path[SN_TRAIN_PATH_MAX + 64];
  eval_result_path(t, name, path, sizeof path);
  sn_wait_for(path, sn_path_exists, NULL, t->rank);
}

// RUN/eval/NAME.json and one log line.
static void record_eval(const sn_trainer *t, const char *name, const sn_eval_result *res) {
  char err[1024], path[SN_TRAIN_PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/eval", t->run_dir);
  sn_mkdir_p(path);
  eval_result_path(t, name, path, sizeof path);
  if (sn_eval_write_json(path, t->cfg.eval.split, res, err, sizeof err) != 0) sn_fatal("%s", err);
  sn_log("eval %-10s nDCG@10 %.4f  R@10 %.4f  R@100 %.4f  MRR@10 %.4f  (%d queries, %d docs, %.1f s)",
         name, res->mean.ndcg_10, res->mean.recall_10, res->mean.recall_100, res->mean.mrr_10,
         res->num_queries, res->num_docs, res->seconds);
}

static void eval_towers(sn_trainer *t, const sn_beir *data, sn_model *qm, const sn_tokenizer *qtok,
                        sn_model *dm, const sn_tokenizer *dtok, const char *name, int student) {
  sn_eval_opts o;
  sn_eval_opts_default(&o);
  o.split = t->cfg.eval.split;
  o.batch = t->cfg.eval.batch;
  o.max_query_len = t->cfg.data.max_query_len;
  o.max_doc_len = t->cfg.data.max_doc_len;
  o.batch_name = "eval.batch";  // messages name the config keys, not sn_eval's flags
  o.max_query_len_name = "data.max_query_len";
  o.max_doc_len_name = "data.max_doc_len";
  o.query_prompt = t->cfg.data.query_prompt;
  o.doc_prompt = t->cfg.data.doc_prompt;
  // The towers are embedded as they were trained: the student with its own pooling.
  o.doc_pooling = sn_pooling_from_name(t->cfg.stage1.pooling, "stage1.pooling");
  o.query_pooling = student ? (int)sn_pooling_from_name(t->cfg.stage2.pooling, "stage2.pooling") : o.doc_pooling;
  sn_eval_result res;
  char err[1024];
  if (sn_eval_run(&o, data, qm, qtok, dm, dtok, &res, err, sizeof err) != 0) sn_bad_input("evaluation: %s", err);
  record_eval(t, name, &res);
}

static int load_eval_data(sn_trainer *t, sn_beir *data) {
  if (!t->cfg.eval.data[0] || t->rank != 0) return 0;
  char err[1024];
  if (sn_beir_load(t->cfg.eval.data, t->cfg.eval.split, data, err, sizeof err) != 0)
    sn_bad_input("eval.data: %s", err);
  return 1;
}

// eval.bm25: the lexical baseline on the same data and metrics (no towers; well under a second for
// the default run's 10k documents), so the summary answers "does it beat BM25?".
static void eval_bm25(sn_trainer *t, const sn_beir *data) {
  sn_eval_opts o;
  sn_eval_opts_default(&o);
  o.split = t->cfg.eval.split;
  o.verbose = 0;
  sn_bm25_opts bm25;
  sn_bm25_opts_default(&bm25);
  sn_eval_result res;
  char err[1024];
  if (sn_eval_bm25_run(&o, &bm25, data, &res, err, sizeof err) != 0) sn_bad_input("eval.bm25: %s", err);
  record_eval(t, "bm25", &res);
}

static void eval_untrained(sn_trainer *t, const sn_beir *data) {
  const sn_cfg_stage1 *s1 = &t->cfg.stage1;
  sn_model *m = sn_trainer_load_model(t, s1->model, s1->model_desc, t->cfg.seed, "stage1.model");
  sn_tokenizer *tok = sn_trainer_load_tokenizer(s1->tokenizer, s1->model, "stage1.tokenizer");
  eval_towers(t, data, m, tok, m, tok, "untrained", 0);
  sn_tokenizer_free(tok);
  sn_model_free(m);
}

static void eval_final(sn_trainer *t, const sn_beir *data, int student) {
  char qdir[SN_TRAIN_PATH_MAX + 32], ddir[SN_TRAIN_PATH_MAX + 32];
  snprintf(qdir, sizeof qdir, "%s/final/%s", t->run_dir, student ? "student" : "query_tower");
  snprintf(ddir, sizeof ddir, "%s/final/doc_tower", t->run_dir);
  sn_model *qm = sn_model_load(qdir, t->ops), *dm = sn_model_load(ddir, t->ops);
  sn_tokenizer *qtok = sn_trainer_load_tokenizer(NULL, qdir, qdir);
  sn_tokenizer *dtok = sn_trainer_load_tokenizer(NULL, ddir, ddir);
  eval_towers(t, data, qm, qtok, dm, dtok, student ? "student" : "stage1", student);
  // The model cards, written with the towers, get the metrics now.
  char err[1024];
  const char *const cards[2] = {student ? "student" : "query_tower", "doc_tower"};
  for (int i = 0; i < (student ? 1 : 2); i++)
    if (sn_train_write_card(t, student ? 2 : 1, cards[i], err, sizeof err) != 0) sn_fatal("%s", err);
  sn_tokenizer_free(qtok);
  sn_tokenizer_free(dtok);
  sn_model_free(qm);
  sn_model_free(dm);
}

static int read_metric_file(const sn_trainer *t, const char *name, double out[4]) {
  char path[SN_TRAIN_PATH_MAX + 64];
  eval_result_path(t, name, path, sizeof path);
  char *text = sn_read_file(path, NULL);
  if (!text) return 0;
  cJSON *j = cJSON_Parse(text);
  free(text);
  if (!j) return 0;
  static const char *const keys[4] = {"ndcg@10", "recall@10", "recall@100", "mrr@10"};
  for (int i = 0; i < 4; i++) out[i] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, keys[i]));
  cJSON_Delete(j);
  return 1;
}

// The metrics of every evaluated tower side by side, and the student as a fraction of the teacher.
static void print_eval_summary(const sn_trainer *t) {
  double m[SN_ARRAY_LEN(EVAL_ROWS)][4];
  int have[SN_ARRAY_LEN(EVAL_ROWS)], any = 0;
  for (size_t i = 0; i < SN_ARRAY_LEN(EVAL_ROWS); i++) any |= have[i] = read_metric_file(t, EVAL_ROWS[i].name, m[i]);
  if (!any) return;
  printf("\n%-28s %9s %9s %10s %8s\n", t->cfg.eval.data, "nDCG@10", "R@10", "R@100", "MRR@10");
  for (size_t i = 0; i < SN_ARRAY_LEN(EVAL_ROWS); i++)
    if (have[i]) printf("%-28s %9.4f %9.4f %10.4f %8.4f\n", EVAL_ROWS[i].label, m[i][0], m[i][1], m[i][2], m[i][3]);
  if (have[1] && have[2] && m[1][0] > 0)
    printf("%-28s %8.1f%% %8.1f%% %9.1f%% %7.1f%%\n", "student / teacher", 100 * m[2][0] / m[1][0],
           100 * m[2][1] / SN_MAX(m[1][1], 1e-12), 100 * m[2][2] / SN_MAX(m[1][2], 1e-12),
           100 * m[2][3] / SN_MAX(m[1][3], 1e-12));
  fflush(stdout);
}

// ---- main --------------------------------------------------------------------------------------

static void set_run_paths(sn_trainer *t) {
  // Normalised ("runs/x/" -> "runs/x"): every path derived from these and printed reads as typed.
  snprintf(t->run_dir, sizeof t->run_dir, "%s", t->cfg.run_dir);
  sn_path_normalize(t->run_dir);
  if (t->cfg.data.cache_dir[0]) snprintf(t->cache_dir, sizeof t->cache_dir, "%s", t->cfg.data.cache_dir);
  else snprintf(t->cache_dir, sizeof t->cache_dir, "%s/cache", t->run_dir);
  sn_path_normalize(t->cache_dir);
}

// Rank 0 creates the run folder and takes its lock before anything else is written there; then
// every rank finds the checkpoint to resume from. A run that trains stage 1 from scratch must not
// mix with an earlier run's metrics and checkpoints: it refuses a used folder unless overwrite.
static void claim_run_dir(sn_trainer *t, const sn_train_args *args, int do0, int do1) {
  if (args->overwrite && args->resume) sn_bad_input("--overwrite starts afresh: it cannot go with --resume");
  if (t->rank == 0) {
    if (sn_mkdir_p(t->run_dir) != 0) sn_bad_input("run_dir: cannot create %s: %s", t->run_dir, strerror(errno));
    if (!sn_is_dir(t->run_dir)) sn_bad_input("run_dir: %s is not a folder", t->run_dir);
    sn_run_dir_lock(t->run_dir);
    if ((do0 || do1) && !args->resume) sn_run_dir_claim_fresh(t->run_dir, args->overwrite);
  }
  sn_comm_barrier(t->comm);  // no rank reads the folder before rank 0 owns (and maybe cleared) it
  sn_trainer_find_resume_point(t, args->resume);
  // Stage 0 is a run of its own: its checkpoints and the towers' do not continue each other.
  if (t->resume_dir[0] && do0 != (t->resume_stage == 0))
    sn_bad_input("%s is a checkpoint of stage %d, but this run trains %s: stage 0 (pretraining) and stages 1-2 "
                 "use separate run folders (stage1.model takes stage 0's RUN/final/" SN_STAGE0_FINAL_NAME ")",
                 t->resume_dir, t->resume_stage, do0 ? "stage 0" : "stages 1-2");
}

// metrics.jsonl keeps the records before where this run starts: up to the checkpoint's step, or
// the stages before the first one trained afresh (none, for stage 1).
static void open_metrics(sn_trainer *t, int do0, int do1) {
  sn_train_log_open(&t->log, t->run_dir, t->rank == 0, t->cfg.log.every);
  if (t->resume_dir[0]) sn_train_log_truncate_after(&t->log, t->resume_stage, t->resume_step);
  else if (do0) sn_train_log_truncate_after(&t->log, 0, 0);
  else sn_train_log_truncate_after(&t->log, do1 ? 0 : 1, INT64_MAX);
}

// Writes the resolved config (rank 0), then all ranks meet.
static void setup_run_dir(sn_trainer *t) {
  if (t->rank == 0) {
    if (sn_mkdir_p(t->cache_dir) != 0) sn_bad_input("cannot create %s: %s", t->cache_dir, strerror(errno));
    char path[SN_TRAIN_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/config.resolved.json", t->run_dir);
    char *json = sn_run_config_to_json(&t->cfg);
    if (sn_write_file_atomic(path, json, strlen(json)) != 0)
      sn_bad_input("cannot write %s: %s", path, strerror(errno));
    free(json);
    // Results of the evaluations this run will redo are removed first: ranks waiting for them
    // must not find an earlier run's. (EVAL_ROWS[i] is evaluated after stage i.)
    for (size_t i = 0; i < SN_ARRAY_LEN(EVAL_ROWS); i++) {
      if ((int)i < t->resume_stage) continue;
      eval_result_path(t, EVAL_ROWS[i].name, path, sizeof path);
      unlink(path);
    }
  }
  sn_comm_barrier(t->comm);
}

int sn_train_main(const sn_train_args *args) {
  sn_trainer t;
  memset(&t, 0, sizeof t);
  char err[2048];
  if (sn_run_config_load(&t.cfg, args->config_path, args->overrides, args->n_overrides, err, sizeof err) != 0)
    sn_bad_input("%s", err);
  if (args->print_config) {
    char *json = sn_run_config_to_json(&t.cfg);
    printf("%s\n", json);
    free(json);
    return 0;
  }
  t.config_hash = sn_run_config_hash(&t.cfg);
  t.stop_after = args->stop_after;
  const int all = args->stage == SN_TRAIN_STAGES_ALL;
  int do0 = args->stage == 0, do1 = all || args->stage == 1, do2 = all || args->stage == 2;
  if (do0 && !t.cfg.stage0.model[0] && !t.cfg.stage0.model_desc[0])
    sn_bad_input("stage 0 is to run but neither 'stage0.model' nor 'stage0.model_desc' is set");
  if (do0 && t.cfg.stage0.n_data == 0 && !args->plan_only)
    sn_bad_input("stage0.data: no pretraining text configured (JSONL {\"text\"} or plain text files)");
  for (int i = 0; i < t.cfg.stage0.n_data && do0 && !args->plan_only; i++)
    if (!sn_exists(t.cfg.stage0.data[i])) sn_bad_input("stage0.data: %s does not exist", t.cfg.stage0.data[i]);
  if (!do0 && t.cfg.data.n_train == 0 && !args->plan_only) sn_bad_input("data.train: no training files configured");
  for (int i = 0; i < t.cfg.data.n_train && !do0 && !args->plan_only; i++)
    if (!sn_exists(t.cfg.data.train[i]))
      sn_bad_input("data.train: %s does not exist", t.cfg.data.train[i]);
  if (do2 && !t.cfg.stage2.student[0] && !t.cfg.stage2.student_desc[0] && t.cfg.stage2.student_from_teacher == 0)
    sn_bad_input("stage 2 is to run but none of 'stage2.student', 'stage2.student_desc' and "
                 "'stage2.student_from_teacher' is set");
  if (t.cfg.threads > 0) omp_set_num_threads(t.cfg.threads);
  if ((args->plan_world > 0 || args->plan_memory_gib > 0) && !args->plan_only)
    sn_bad_input("--world and --memory are for --plan only");
  if (args->plan_only) {  // no communicator, no device needed: a login node can plan a GPU job
    sn_memory_plan plan;
    sn_memory_plan_check(&plan, &t.cfg, sn_ops_for_plan(t.cfg.device), args->plan_world > 0 ? args->plan_world : 1,
                         do0, do1, do2, 0, 1, (size_t)(args->plan_memory_gib * SN_GIB));
    return 0;
  }

  // Before the communicator's rendezvous, which can take seconds: a SIGUSR1 or SIGTERM that comes
  // during start-up then stops the run at its first step check (checkpoint, requeue) instead of
  // killing the rank with the default action.
  install_signal_handlers();
  // The communicator first: with CUDA it picks this rank's GPU before the backend touches one.
  t.comm = sn_comm_create(t.cfg.device, t.cfg.comm_timeout_s);
  t.ops = sn_ops_by_name(t.cfg.device);
  t.rank = t.comm->rank;
  t.world = t.comm->world_size;
  // The memory plan, before anything is loaded or written: a run that cannot fit stops here.
  sn_memory_plan_check(&t.plan, &t.cfg, t.ops, t.world, do0, do1, do2, t.rank, 0, 0);
  set_run_paths(&t);
  sn_trainer_fingerprint(&t, do0, do1, do2);
  claim_run_dir(&t, args, do0, do1);
  setup_run_dir(&t);
  log_rank_placement(&t);
  if (t.rank == 0)
    sn_log("sn_train: run %s, device %s, %d rank%s (%s), %d CPU threads per rank", t.run_dir,
           t.ops->name, t.world, t.world > 1 ? "s" : "", sn_comm_backend_name(t.comm->backend),
           omp_get_max_threads());
  open_metrics(&t, do0, do1);
  sn_train_examples_init(&t.examples);
  if (do0) {
    int rc = sn_train_stage0(&t);
    sn_train_log_close(&t.log);
    if (rc < 0 && t.rank == 0)
      sn_log("stopped before the end (signal or --stop-after): checkpoint written; continue with --resume auto");
    sn_comm_destroy(t.comm);
    return 0;
  }

  const char *paths[SN_CFG_MAX_TRAIN_FILES];
  for (int i = 0; i < t.cfg.data.n_train; i++) paths[i] = t.cfg.data.train[i];
  sn_train_examples_load(&t.examples, paths, t.cfg.data.n_train, t.cfg.data.skip_bad_lines,
                         (size_t)t.cfg.data.max_line_bytes);

  if (do1) sn_trainer_check_negatives(&t, t.cfg.stage1.negatives_per_query, "stage1.negatives_per_query");
  if (do2 && t.cfg.stage2.gamma > 0)
    sn_trainer_check_negatives(&t, t.cfg.stage2.negatives_per_query, "stage2.negatives_per_query");
  sn_beir eval_data;
  memset(&eval_data, 0, sizeof eval_data);
  int evaluating = load_eval_data(&t, &eval_data);
  int fresh = t.resume_stage == 0;
  if (do1) {
    if (fresh) {
      if (evaluating) eval_untrained(&t, &eval_data);
      wait_for_eval(&t, "untrained");
    }
    int rc = sn_train_stage1(&t);
    if (rc < 0) goto stopped;
    if (evaluating) eval_final(&t, &eval_data, 0);
    wait_for_eval(&t, "stage1");
  }
  if (do2) {
    if (t.resume_stage == 1)
      sn_bad_input("the newest checkpoint is of stage 1 (step %lld): finish stage 1 first "
                   "(sn_train --stage 1 --resume auto, or --stage all)", (long long)t.resume_step);
    int rc = sn_train_stage2(&t);
    if (rc < 0) goto stopped;
    if (evaluating) eval_final(&t, &eval_data, 1);
    wait_for_eval(&t, "student");
  }
  if (evaluating && t.cfg.eval.bm25) eval_bm25(&t, &eval_data);
  if (t.rank == 0) print_eval_summary(&t);
  goto done;
stopped:
  if (t.rank == 0) sn_log("stopped before the end (signal or --stop-after): checkpoint written; continue with --resume auto");
done:
  if (evaluating) sn_beir_free(&eval_data);
  sn_train_examples_free(&t.examples);
  sn_train_log_close(&t.log);
  sn_comm_destroy(t.comm);
  return 0;
}
