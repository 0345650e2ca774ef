// The resume point of a run and whether the checkpoint fits the config: a checkpoint records
// fingerprints of what it depends on (each stage's architecture and tokenizer, the training data)
// and the resolved config. Resuming refuses (exit 2, naming the keys) when a dependency changed,
// and warns "not an exact replay" naming the keys that change the numbers; keys that do not
// (the run folder, logging, checkpointing, evaluation, threads on a GPU) are ignored, so moving a
// run folder resumes silently.
#define _GNU_SOURCE
#include <string.h>

#include "cJSON.h"
#include "common.h"
#include "model_config.h"
#include "train_internal.h"

// ---- fingerprints ----------------------------------------------------------------------------

static uint64_t architecture_fingerprint(const char *dir, const char *desc, const char *what) {
  if (!(dir && dir[0]) && !(desc && desc[0])) return 0;  // not configured: nothing to compare
  sn_model_config mc;
  sn_trainer_model_config(dir, desc, what, &mc);
  char *json = sn_config_to_hf_json(&mc);
  uint64_t h = sn_hash64(json, strlen(json), 0);
  free(json);
  return h;
}

static uint64_t tokenizer_fingerprint(const char *path, const char *fallback) {
  const char *src = path && path[0] ? path : fallback;
  uint64_t size = 0, h = 0;
  if (!src || !src[0]) return 0;
  if (sn_is_dir(src)) return sn_tokenizer_files_checksum(src, &h) == 0 ? h : 0;
  return sn_file_checksum(src, &size, &h) == 0 ? h : 0;  // unreadable: the tokenizer load says so
}

static uint64_t data_fingerprint(const char (*paths)[SN_CFG_PATH_MAX], int n) {
  uint64_t h = 0;
  for (int i = 0; i < n; i++) {
    uint64_t file[2] = {0, 0};
    if (sn_file_checksum(paths[i], &file[0], &file[1]) != 0) return 0;
    h = sn_hash64(file, sizeof file, h);
  }
  return h;
}

// What a fingerprint covers: its state.bin section, the keys named when it differs, the stages
// whose checkpoints depend on it (a bit per stage: 1 << stage).
typedef struct {
  const char *section;
  const char *keys;
  unsigned stages;
} fingerprint_kind;

#define FP_STAGE0 (1u << 0)
#define FP_STAGE1 (1u << 1)
#define FP_STAGE2 (1u << 2)
static const fingerprint_kind FINGERPRINTS[SN_FINGERPRINTS] = {
    {"fingerprint.stage1.architecture", "stage1.model / stage1.model_desc (the towers' architecture)", FP_STAGE1 | FP_STAGE2},
    {"fingerprint.stage1.tokenizer", "stage1.tokenizer (the towers' tokenizer)", FP_STAGE1 | FP_STAGE2},
    {"fingerprint.stage2.architecture", "stage2.student / stage2.student_desc (the student's architecture)", FP_STAGE2},
    {"fingerprint.stage2.tokenizer", "stage2.tokenizer (the student's tokenizer)", FP_STAGE2},
    {"fingerprint.data", "data.train (the training data)", FP_STAGE1 | FP_STAGE2},
    {"fingerprint.stage0.architecture", "stage0.model / stage0.model_desc (the architecture)", FP_STAGE0},
    {"fingerprint.stage0.tokenizer", "stage0.tokenizer (the tokenizer)", FP_STAGE0},
    {"fingerprint.stage0.data", "stage0.data (the pretraining text)", FP_STAGE0},
};

void sn_trainer_fingerprint(sn_trainer *t, int do0, int do1, int do2) {
  const sn_run_config *c = &t->cfg;
  memset(t->fingerprints, 0, sizeof t->fingerprints);
  // Only the stages this run trains: a --stage 2 run need not find stage 1's model any more.
  if (do1) {
    t->fingerprints[0] = architecture_fingerprint(c->stage1.model, c->stage1.model_desc, "stage1.model");
    t->fingerprints[1] = tokenizer_fingerprint(c->stage1.tokenizer, c->stage1.model);
  }
  if (do2) {
    t->fingerprints[2] = architecture_fingerprint(c->stage2.student, c->stage2.student_desc, "stage2.student");
    t->fingerprints[3] = tokenizer_fingerprint(c->stage2.tokenizer, c->stage2.student);
  }
  if (!do0) t->fingerprints[4] = data_fingerprint((const char (*)[SN_CFG_PATH_MAX])c->data.train, c->data.n_train);
  if (do0) {
    t->fingerprints[5] = architecture_fingerprint(c->stage0.model, c->stage0.model_desc, "stage0.model");
    t->fingerprints[6] = tokenizer_fingerprint(c->stage0.tokenizer, c->stage0.model);
    t->fingerprints[7] = data_fingerprint((const char (*)[SN_CFG_PATH_MAX])c->stage0.data, c->stage0.n_data);
  }
}

void sn_trainer_add_fingerprints(const sn_trainer *t, sn_state_writer *w) {
  for (int i = 0; i < SN_FINGERPRINTS; i++) sn_state_add_u64(w, FINGERPRINTS[i].section, t->fingerprints[i]);
  char *json = sn_run_config_to_json(&t->cfg);
  sn_state_add_copy(w, SN_STATE_CONFIG_SECTION, json, strlen(json));
  free(json);
}

// ---- config differences ------------------------------------------------------------------------

// Keys that never change the numbers, or whose content the fingerprints compare instead of their
// path (a moved data file or run folder resumes exactly). A trailing '.' matches a whole section.
static const char *const KEYS_WITHOUT_EFFECT[] = {
    "run_dir", "data.cache_dir", "comm_timeout_s", "log.", "checkpoint.", "eval.", "export.", "dist.check_replicas_every",
    "data.train", "stage1.model", "stage1.model_desc", "stage1.tokenizer", "stage2.student",
    "stage2.student_desc", "stage2.tokenizer", "stage0.model", "stage0.model_desc", "stage0.tokenizer", "stage0.data",
    "stage0.eval_data",
};
// Keys that decide the shapes of what a checkpoint holds: a change cannot be resumed.
static const char *const ARCHITECTURE_KEYS[] = {
    "stage1.shared_towers", "stage1.lora.rank", "stage1.lora.targets", "stage1.lora.shared",
};

static int key_matches(const char *key, const char *pattern) {
  size_t n = strlen(pattern);
  if (pattern[n - 1] == '.') return strncmp(key, pattern, n) == 0;
  return strcmp(key, pattern) == 0;
}

static int key_in(const char *key, const char *const *list, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (key_matches(key, list[i])) return 1;
  return 0;
}

// Whether a key's change leaves a resumed run an exact replay of the new config.
static int key_without_effect(const char *key, const sn_run_config *cfg, int ckpt_stage) {
  if (key_in(key, KEYS_WITHOUT_EFFECT, SN_ARRAY_LEN(KEYS_WITHOUT_EFFECT))) return 1;
  if (strcmp(key, "threads") == 0) return strcmp(cfg->device, "cpu") != 0;  // OpenMP threads: CPU only
  // A stage-1 checkpoint does not depend on stage 2, which has not started; stages 1 and 2 not on
  // stage 0 (a run of its own), nor stage 0 on the towers' keys and data.
  if (ckpt_stage == 0)
    return strncmp(key, "stage1.", 7) == 0 || strncmp(key, "stage2.", 7) == 0 || strncmp(key, "data.", 5) == 0;
  if (strncmp(key, "stage0.", 7) == 0) return 1;
  return ckpt_stage == 1 && strncmp(key, "stage2.", strlen("stage2.")) == 0;
}

// Appends "key" to the comma-separated list.
static void list_key(sn_strbuf *list, const char *key) { sn_strbuf_printf(list, "%s%s", list->len ? ", " : "", key); }

// Walks a's leaves, comparing each with the same path in b (absent = null); keys only in b are
// found by the walk with a and b swapped.
static void diff_leaves(const cJSON *a, const cJSON *b, const char *prefix, int only_missing, const sn_run_config *cfg,
                        int ckpt_stage, sn_strbuf *changed, sn_strbuf *refused) {
  for (const cJSON *item = a ? a->child : NULL; item; item = item->next) {
    char key[256];
    snprintf(key, sizeof key, "%s%s%s", prefix, prefix[0] ? "." : "", item->string ? item->string : "");
    const cJSON *other = b ? cJSON_GetObjectItemCaseSensitive(b, item->string) : NULL;
    if (cJSON_IsObject(item)) {
      diff_leaves(item, cJSON_IsObject(other) ? other : NULL, key, only_missing, cfg, ckpt_stage, changed, refused);
      continue;
    }
    if (only_missing ? other != NULL : (other && cJSON_Compare(item, other, 1))) continue;
    if (key_without_effect(key, cfg, ckpt_stage)) continue;
    list_key(key_in(key, ARCHITECTURE_KEYS, SN_ARRAY_LEN(ARCHITECTURE_KEYS)) ? refused : changed, key);
  }
}

// The checkpoint's fingerprints and config against this run's; exits 2 naming what it depends on
// that changed, warns naming keys that make the run differ from a straight one.
static void check_compatible(const sn_trainer *t, const sn_state_reader *r, int ckpt_stage) {
  sn_strbuf refused = {0}, changed = {0};
  for (int i = 0; i < SN_FINGERPRINTS; i++) {
    size_t bytes = 0;
    const void *saved = sn_state_get(r, FINGERPRINTS[i].section, &bytes);
    if (!saved || bytes != sizeof(uint64_t)) continue;  // a checkpoint of an older build
    uint64_t value;
    memcpy(&value, saved, sizeof value);
    int depends = (FINGERPRINTS[i].stages >> ckpt_stage) & 1u;
    int known = value != 0 && t->fingerprints[i] != 0;  // 0: not configured, or not computed by that run
    if (depends && known && value != t->fingerprints[i]) list_key(&refused, FINGERPRINTS[i].keys);
  }
  size_t bytes = 0;
  const char *text = sn_state_get(r, SN_STATE_CONFIG_SECTION, &bytes);
  if (text) {
    cJSON *saved = cJSON_ParseWithLength(text, bytes);
    char *now_text = sn_run_config_to_json(&t->cfg);
    cJSON *now = cJSON_Parse(now_text);
    free(now_text);
    if (!saved || !now) sn_bad_input("%s/%s: the saved config does not parse", t->resume_dir, SN_CKPT_STATE);
    diff_leaves(now, saved, "", 0, &t->cfg, ckpt_stage, &changed, &refused);
    diff_leaves(saved, now, "", 1, &t->cfg, ckpt_stage, &changed, &refused);
    cJSON_Delete(saved);
    cJSON_Delete(now);
  } else if (sn_state_get_u64(r, "config_hash") != t->config_hash) {  // older build: only a hash
    list_key(&changed, "(unknown keys: the checkpoint has only a config hash)");
  }
  if (refused.len)
    sn_bad_input("cannot resume from %s: it was written for another %s; resume with the settings it was "
                 "written with, or start a new run_dir",
                 t->resume_dir, refused.s);
  if (changed.len)
    sn_warn("the config differs from the one %s was written with in %s: the run continues, but not as an "
            "exact replay", t->resume_dir, changed.s);
  free(refused.s);
  free(changed.s);
}

// ---- the resume point ---------------------------------------------------------------------------

void sn_trainer_find_resume_point(sn_trainer *t, const char *resume) {
  t->resume_dir[0] = '\0';
  t->resume_stage = 0;
  t->resume_step = 0;
  if (!resume) return;
  char err[1024];
  if (strcmp(resume, "auto") == 0) {
    int stage;
    int64_t step;
    if (sn_ckpt_find_latest(t->run_dir, t->resume_dir, sizeof t->resume_dir, &stage, &step) != 0) {
      if (t->rank == 0) sn_log("resume: no complete checkpoint in %s, starting fresh", t->run_dir);
      t->resume_dir[0] = '\0';
      return;
    }
  } else {
    if (sn_ckpt_validate(resume, err, sizeof err) != 0)
      sn_bad_input("--resume %s: not a checkpoint to resume from: %s", resume, err);
    snprintf(t->resume_dir, sizeof t->resume_dir, "%s", resume);
  }
  // The stage and step are state.bin's (a renamed folder must not move the run).
  char state[SN_TRAIN_PATH_MAX + 32];
  snprintf(state, sizeof state, "%s/%s", t->resume_dir, SN_CKPT_STATE);
  sn_state_reader *r = sn_state_read(state, err, sizeof err);
  if (!r) sn_bad_input("%s", err);
  t->resume_stage = (int)sn_state_get_u64(r, "stage");
  t->resume_step = (int64_t)sn_state_get_u64(r, "step");
  if (t->resume_stage < 0 || t->resume_stage > 2 || t->resume_step < 0)
    sn_bad_input("%s: stage %d, step %lld: not a checkpoint of sn_train", state, t->resume_stage,
                 (long long)t->resume_step);
  check_compatible(t, r, t->resume_stage);
  sn_state_reader_free(r);
  if (t->rank == 0)
    sn_log("resume: stage %d, step %lld, from %s", t->resume_stage, (long long)t->resume_step, t->resume_dir);
}
