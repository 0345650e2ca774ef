// Checkpoint orchestration of the training loop: the final towers and the checkpoint towers as
// Hugging Face folders, optimizer state (replicated in state.bin, or one shard file per rank under
// ZeRO-1 and ZeRO-2), the data cursor and step; the restore of all of it, whatever world size wrote it.
// The folder mechanics (temporary folder, fsync, COMPLETE marker, rename, pruning) are checkpoint.c's.
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common.h"
#include "model_lora.h"
#include "train_internal.h"

// Safetensors in the backend's storage dtype: the weights exactly as trained, half the bytes of
// fp32 for bf16 towers (a 7B tower is 15 GB, not 30). Resuming is still exact: the fp32 master
// weights are in the optimizer state (on the CPU backend the weights are the master).
// The tower's folder also gets the sentence-transformers files (export.h) when export_info is set.
static int save_tower(const sn_model *m, const char *dir, const char *tokenizer_dir, const sn_export_info *export_info,
                      char *err, size_t errlen) {
  if (sn_mkdir_p(dir) != 0) {
    snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
    return -1;
  }
  if (sn_model_save(m, dir, m->ops->storage, err, errlen) != 0) return -1;
  if (tokenizer_dir && tokenizer_dir[0] && sn_copy_tokenizer_files(tokenizer_dir, dir, err, errlen) != 0) return -1;
  return export_info ? sn_export_write(dir, export_info, err, errlen) : 0;
}

// A checkpoint's copy of a tower: the whole tower, or a LoRA tower's adapter only (fp32, exact).
static int save_ckpt_tower(const sn_ckpt_tower *tw, const char *ckpt_dir, char *err, size_t errlen) {
  char dir[SN_TRAIN_PATH_MAX + 64];
  if (!tw->model->lora) {
    snprintf(dir, sizeof dir, "%s/%s", ckpt_dir, tw->name);
    return save_tower(tw->model, dir, tw->tokenizer_dir, tw->export_info, err, errlen);
  }
  snprintf(dir, sizeof dir, "%s/%s", ckpt_dir, tw->adapter_name);
  return sn_lora_save_peft(tw->model->lora, dir, tw->base_name, err, errlen);
}

sn_dtype sn_trainer_export_dtype(const sn_trainer *t) {
  const char *d = t->cfg.export.dtype;
  return !strcmp(d, "f32") ? SN_DTYPE_F32 : !strcmp(d, "bf16") ? SN_DTYPE_BF16 : t->ops->storage;
}

void sn_trainer_save_final_tower(const sn_ckpt_tower *tw, const char *final_dir, sn_dtype dtype) {
  char err[1024], dir[SN_TRAIN_PATH_MAX + 64];
  snprintf(dir, sizeof dir, "%s/%s", final_dir, tw->name);
  // what sn_embed, sn_eval and transformers load: the tower (W + s·B·A for LoRA), no lm_head
  if (sn_mkdir_p(dir) != 0) sn_fatal("cannot create %s: %s", dir, strerror(errno));
  if (sn_lora_save_merged(tw->model, dir, dtype, err, sizeof err) != 0) sn_fatal("%s", err);
  if (tw->tokenizer_dir && tw->tokenizer_dir[0] &&
      sn_copy_tokenizer_files(tw->tokenizer_dir, dir, err, sizeof err) != 0)
    sn_fatal("%s", err);
  if (tw->export_info && sn_export_write(dir, tw->export_info, err, sizeof err) != 0) sn_fatal("%s", err);
  if (!tw->model->lora) return;
  snprintf(dir, sizeof dir, "%s/%s", final_dir, tw->adapter_name);
  if (sn_lora_save_peft(tw->model->lora, dir, tw->base_name, err, sizeof err) != 0) sn_fatal("%s", err);
}

// Room on dir's file system for `need` bytes plus a margin (safetensors headers, tokenizer files,
// what other writers add meanwhile): 0, or -1 with err saying how much is missing. A write that
// cannot fit is refused before it starts, rather than failing half-way after minutes of I/O.
#define DISK_MARGIN_FRACTION 0.02
int sn_trainer_disk_room(const char *dir, size_t need, const char *what, char *err, size_t errlen) {
  struct statvfs fs;
  if (statvfs(dir, &fs) != 0) return 0;  // unknown: let the write itself report
  const double avail = (double)fs.f_bavail * (double)fs.f_frsize, want = need * (1 + DISK_MARGIN_FRACTION);
  if (want <= avail) return 0;
  snprintf(err, errlen, "%s needs %.2f GB but %s has %.2f GB free", what, want / 1e9, dir, avail / 1e9);
  return -1;
}

// Bytes a checkpoint writes: its towers in the storage dtype and, per optimizer, three fp32 arrays
// (master, m, v) over all ranks' shards.
static size_t checkpoint_bytes(const sn_ckpt_optimizer *opts, int nopts, const sn_ckpt_tower *towers, int ntowers) {
  size_t bytes = 0;
  for (int i = 0; i < ntowers; i++) bytes += towers[i].model->num_elements * towers[i].model->ops->storage_size;
  for (int i = 0; i < nopts; i++) bytes += 3 * opts[i].opt->model->num_elements * sizeof(float);
  return bytes;
}

static const char *const OPT_PARTS[3] = {"master", "m", "v"};
// Per-rank optimizer shards (ZeRO-1 and ZeRO-2) in a checkpoint folder: state-rank<R>.bin.
#define SHARD_FILE_FORMAT "%s/state-rank%05d.bin"

// One part of an optimizer's state (a sn_state_source): read from the backend while the file is written.
typedef struct {
  const sn_optimizer *opt;
  sn_opt_state which;
} optimizer_source;
static void read_optimizer_state(const void *ctx, size_t offset, size_t bytes, void *dst) {
  const optimizer_source *src = ctx;
  sn_optimizer_download_range(src->opt, src->which, offset / sizeof(float), bytes / sizeof(float), dst);
}

// This rank's slice of an optimizer (the whole buffer when replicated): prefix.{master,m,v},
// streamed from the backend, and prefix.begin, the slice's first element. sources (3) live until written.
static void add_optimizer_slice(sn_state_writer *w, const char *prefix, const sn_optimizer *opt,
                                optimizer_source *sources) {
  char name[64];
  for (int i = 0; i < 3; i++) {
    sources[i] = (optimizer_source){opt, (sn_opt_state)i};
    snprintf(name, sizeof name, "%s.%s", prefix, OPT_PARTS[i]);
    sn_state_add_source(w, name, opt->shard_len * sizeof(float), read_optimizer_state, &sources[i]);
  }
  snprintf(name, sizeof name, "%s.begin", prefix);
  sn_state_add_u64(w, name, opt->shard_begin);
}

// Restores one file's slices of prefix.{master,m,v} (sn_optimizer_upload_range keeps what this rank
// holds); returns the elements.
static size_t restore_optimizer_slice(const sn_state_reader *r, const char *path, const char *prefix,
                                      sn_optimizer *opt) {
  const size_t n = opt->model->num_elements;
  char name[64];
  snprintf(name, sizeof name, "%s.begin", prefix);
  size_t begin = sn_state_get_u64(r, name), len = 0;
  for (int i = 0; i < 3; i++) {
    snprintf(name, sizeof name, "%s.%s", prefix, OPT_PARTS[i]);
    size_t bytes = 0;
    const void *src = sn_state_get(r, name, &bytes);
    if (!src) sn_bad_input("%s: section '%s' is missing", path, name);
    if (i > 0 && bytes / sizeof(float) != len)
      sn_bad_input("%s: '%s' holds %zu elements, '%s.master' %zu", path, name, bytes / sizeof(float), prefix, len);
    len = bytes / sizeof(float);
    if (begin > n || len > n - begin)
      sn_bad_input("%s: '%s' covers elements [%zu, %zu) of a model with %zu (another model?)", path, name,
                   begin, begin + len, n);
    sn_optimizer_upload_range(opt, (sn_opt_state)i, begin, len, src);
  }
  return len;
}

// An optimizer's whole state from a checkpoint folder: from state.bin when one rank wrote it all,
// else from every rank's shard file, whatever the world size that wrote them (so a run resumes on
// another number of ranks). The files are mapped, so no host copy of the state is made.
static void restore_optimizer(const char *dir, const sn_state_reader *global, const char *prefix,
                              sn_optimizer *opt) {
  const size_t n = opt->model->num_elements;
  char name[64], path[SN_TRAIN_PATH_MAX + 64], err[1024];
  snprintf(name, sizeof name, "%s.master", prefix);
  if (sn_state_get(global, name, NULL)) {
    snprintf(path, sizeof path, "%s/state.bin", dir);
    if (restore_optimizer_slice(global, path, prefix, opt) != n)
      sn_bad_input("%s: '%s' does not cover the model's %zu parameters", path, name, n);
    return;
  }
  size_t covered = 0;
  for (int rank = 0;; rank++) {
    snprintf(path, sizeof path, SHARD_FILE_FORMAT, dir, rank);
    if (access(path, F_OK) != 0) break;
    sn_state_reader *r = sn_state_read(path, err, sizeof err);
    if (!r) sn_bad_input("%s", err);
    covered += restore_optimizer_slice(r, path, prefix, opt);
    sn_state_reader_free(r);
  }
  if (covered != n)
    sn_bad_input("%s: the optimizer state of '%s' covers %zu of %zu parameters (shard files missing?)", dir,
                 prefix, covered, n);
}

// Rank 0 makes the temporary folder, every rank writes its shard (when sharded), rank 0 writes the
// towers and state.bin and commits; every rank learns the outcome.
static int write_checkpoint(sn_trainer *t, int stage, int64_t step, const sn_ckpt_tower *towers, int ntowers,
                            sn_state_writer *state, sn_state_writer *shard) {
  char tmp[SN_TRAIN_PATH_MAX], err[1024] = "";
  double failed = 0;
  if (t->rank == 0 && sn_ckpt_begin(t->run_dir, stage, step, tmp, sizeof tmp, err, sizeof err) != 0) failed = 1;
  sn_ckpt_dir(t->run_dir, stage, step, 1, tmp, sizeof tmp);
  sn_comm_all_reduce_f64_host(t->comm, &failed, 1);  // the folder exists (or not) for every rank
  if (!failed && shard) {
    char path[SN_TRAIN_PATH_MAX + 64];
    snprintf(path, sizeof path, SHARD_FILE_FORMAT, tmp, t->rank);
    if (sn_state_write(shard, path) != 0) {
      snprintf(err, sizeof err, "rank %d: cannot write %s: %s", t->rank, path, strerror(errno));
      failed = 1;
    }
    sn_comm_all_reduce_f64_host(t->comm, &failed, 1);
  }
  if (t->rank == 0) {
    int rc = failed ? -1 : 0;
    if (failed && !err[0]) snprintf(err, sizeof err, "another rank could not write its optimizer shard");
    for (int i = 0; i < ntowers && rc == 0; i++) rc = save_ckpt_tower(&towers[i], tmp, err, sizeof err);
    if (rc == 0) {
      char path[SN_TRAIN_PATH_MAX + 64];
      snprintf(path, sizeof path, "%s/state.bin", tmp);
      if (sn_state_write(state, path) != 0) {
        snprintf(err, sizeof err, "cannot write %s: %s", path, strerror(errno));
        rc = -1;
      }
    }
    if (rc == 0) rc = sn_ckpt_commit(t->run_dir, tmp, stage, step, t->cfg.checkpoint.keep, err, sizeof err);
    else sn_ckpt_abort(tmp);
    if (rc != 0)
      sn_warn("checkpoint at stage %d step %lld failed, the previous checkpoint is kept: %s", stage,
              (long long)step, err);
    failed = rc != 0;
  } else if (err[0]) {
    sn_warn("%s", err);
  }
  sn_comm_all_reduce_f64_host(t->comm, &failed, 1);
  return failed ? -1 : 0;
}

int sn_trainer_checkpoint(sn_trainer *t, int stage, int64_t step, double elapsed_s,
                          const sn_sampler *sampler, const sn_ckpt_optimizer *opts, int nopts,
                          const sn_ckpt_tower *towers, int ntowers) {
  char err[1024];
  if (sn_trainer_weights_finite(opts, nopts, err, sizeof err) != 0) {  // same answer on every rank
    if (t->rank == 0)
      sn_warn("checkpoint at stage %d step %lld refused, the previous checkpoint is kept: %s", stage,
              (long long)step, err);
    return -1;
  }
  double no_room = 0;
  if (t->rank == 0 && sn_trainer_disk_room(t->run_dir, checkpoint_bytes(opts, nopts, towers, ntowers), "the checkpoint",
                                           err, sizeof err) != 0) {
    sn_warn("checkpoint at stage %d step %lld skipped, the previous checkpoint is kept: %s", stage, (long long)step,
            err);
    no_room = 1;
  }
  sn_comm_all_reduce_f64_host(t->comm, &no_room, 1);
  if (no_room) return -1;
  sn_state_writer *w = sn_state_writer_new(), *shard = NULL;
  optimizer_source *sources = callocCheck((size_t)nopts * 3, sizeof *sources);  // read while written
  sn_state_add_u64(w, "config_hash", t->config_hash);
  sn_trainer_add_fingerprints(t, w);
  sn_state_add_u64(w, "stage", (uint64_t)stage);
  sn_state_add_u64(w, "step", (uint64_t)step);
  sn_state_add_u64(w, "skipped_nonfinite", (uint64_t)t->skipped_nonfinite);
  sn_state_add_copy(w, "elapsed_s", &elapsed_s, sizeof elapsed_s);
  sn_data_cursor cursor;
  sn_sampler_get_cursor(sampler, &cursor);
  sn_state_add_copy(w, "cursor", &cursor, sizeof cursor);
  for (int i = 0; i < nopts; i++) {
    char name[64];
    snprintf(name, sizeof name, "%s.step", opts[i].prefix);
    sn_state_add_u64(w, name, (uint64_t)opts[i].opt->step);
    if (opts[i].opt->zero) {
      if (!shard) shard = sn_state_writer_new();
      add_optimizer_slice(shard, opts[i].prefix, opts[i].opt, sources + 3 * i);
    } else if (t->rank == 0) {
      add_optimizer_slice(w, opts[i].prefix, opts[i].opt, sources + 3 * i);
    }
  }
  int rc = write_checkpoint(t, stage, step, towers, ntowers, w, shard);
  sn_state_writer_free(w);
  sn_state_writer_free(shard);
  free(sources);
  return rc;
}

int64_t sn_trainer_restore(sn_trainer *t, int stage, sn_sampler *sampler, const sn_ckpt_optimizer *opts,
                           int nopts, double *elapsed_s) {
  char path[SN_TRAIN_PATH_MAX + 32], err[1024];
  snprintf(path, sizeof path, "%s/state.bin", t->resume_dir);
  sn_state_reader *r = sn_state_read(path, err, sizeof err);
  if (!r) sn_bad_input("%s", err);
  for (int i = 0; i < nopts; i++) {
    sn_optimizer *opt = opts[i].opt;
    restore_optimizer(t->resume_dir, r, opts[i].prefix, opt);
    char name[64];
    snprintf(name, sizeof name, "%s.step", opts[i].prefix);
    opt->step = (int64_t)sn_state_get_u64(r, name);
  }
  sn_data_cursor cursor;
  sn_state_get_exact(r, "cursor", &cursor, sizeof cursor);
  if (sn_sampler_set_cursor(sampler, &cursor, err, sizeof err) != 0) sn_bad_input("%s: %s", path, err);
  int64_t step = (int64_t)sn_state_get_u64(r, "step");
  // absent from checkpoints written before train.skip_nonfinite existed: none skipped
  t->skipped_nonfinite = sn_state_get(r, "skipped_nonfinite", NULL) ? (int64_t)sn_state_get_u64(r, "skipped_nonfinite") : 0;
  sn_state_get_exact(r, "elapsed_s", elapsed_s, sizeof *elapsed_s);
  sn_state_reader_free(r);
  if (t->rank == 0) sn_log("stage %d: resumed at step %lld from %s", stage, (long long)step, t->resume_dir);
  return step;
}

int sn_trainer_checkpoint_due(const sn_trainer *t, int64_t step, int64_t total, int stopping) {
  int periodic = t->cfg.checkpoint.every > 0 && step % t->cfg.checkpoint.every == 0;
  return periodic || stopping || step == total;
}

