// The encoder handle: open (backend, execution context, tower, tokenizer, settings, workspace),
// encode texts or ids under the handle's lock in its context, close. Every failure is a status and
// a message (encoder.h's contract): the loaders here are the _try variants of those sn_embed uses,
// which exit instead.
#include <errno.h>
#include <omp.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "encoder_internal.h"

#define TOKENIZER_FILE "tokenizer.json"
#define WHAT_TEXTS "sn_encode"
#define WHAT_IDS "sn_encode_ids"

static sn_status fail(char *err, size_t errlen, sn_status st, const char *fmt, const char *arg) {
  if (err && errlen) snprintf(err, errlen, fmt, arg);
  return st;
}

// The folder's tokenizer; a folder without tokenizer.json opens for ids only (*tok NULL).
static sn_status load_tokenizer(const char *dir, sn_tokenizer **tok, char *err, size_t errlen) {
  char path[4096];
  struct stat st;
  *tok = NULL;
  if (snprintf(path, sizeof path, "%s/" TOKENIZER_FILE, dir) >= (int)sizeof path)
    return fail(err, errlen, SN_ERR_MODEL, "%s: path too long", dir);
  if (stat(path, &st) != 0 && errno == ENOENT) return SN_OK;
  *tok = sn_tokenizer_load(dir, err, errlen);
  return *tok ? SN_OK : SN_ERR_MODEL;
}

// The handle's context made the calling thread's (backends without contexts: nothing); returns the
// context bound before, for unbind.
static void *bind(const sn_encoder *e) { return e->context ? e->ops->context_bind(e->context) : NULL; }
static void unbind(const sn_encoder *e, void *previous) {
  if (e->context) e->ops->context_bind(previous);
}

// Everything the handle holds, in its context (the device buffers were made there), then the context.
static void free_parts(sn_encoder *e) {
  void *previous = bind(e);
  sn_embedder_free(e->embedder);
  if (e->tok) sn_tokenizer_free(e->tok);
  sn_model_free(e->model);
  unbind(e, previous);
  if (e->context) e->ops->context_free(e->context);
}

// The tower, loaded in the handle's context (bound by the caller), and what encodes with it.
static sn_status load_tower(sn_encoder *e, const char *dir, const sn_encoder_options *o, char *err, size_t errlen) {
  if (!(e->model = sn_model_load_try(dir, e->ops, err, errlen))) return SN_ERR_MODEL;
  sn_status rc = load_tokenizer(dir, &e->tok, err, errlen);
  if (rc != SN_OK) return rc;
  sn_encoder_settings s;
  if ((rc = sn_encoder_resolve(dir, e->model, o, &s, err, errlen)) != SN_OK) return rc;
  e->embedder = sn_embedder_new(e->model, e->tok, &s.embed, err, errlen);
  sn_encoder_settings_free(&s);
  return e->embedder ? SN_OK : SN_ERR_ARGUMENT;
}

static sn_status open_tower(sn_encoder *e, const char *dir, const sn_encoder_options *o, char *err, size_t errlen) {
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
    return fail(err, errlen, SN_ERR_MODEL, "%s: not a folder (an exported tower: config.json, model.safetensors, "
                "tokenizer.json)", dir);
  sn_status rc = sn_encoder_pick_backend(o->device, &e->ops, err, errlen);
  if (rc != SN_OK) return rc;
  if (e->ops->context_new) e->context = e->ops->context_new();
  void *previous = bind(e);
  rc = load_tower(e, dir, o, err, errlen);
  unbind(e, previous);
  return rc;
}

sn_status sn_encoder_open(const char *dir, const sn_encoder_options *opts, sn_encoder **out, char *err,
                          size_t errlen) {
  if (err && errlen) err[0] = '\0';
  if (!out) return fail(err, errlen, SN_ERR_ARGUMENT, "sn_encoder_open: %s is NULL", "out");
  *out = NULL;
  if (!dir) return fail(err, errlen, SN_ERR_ARGUMENT, "sn_encoder_open: %s is NULL", "dir");
  sn_encoder_options defaults;
  sn_encoder_options_init(&defaults);
  const sn_encoder_options *o = opts ? opts : &defaults;
  char why[SN_ENCODER_ERR_LEN];
  sn_encoder *e = callocCheck(1, sizeof *e);
  e->threads = o->threads;
  sn_status rc = open_tower(e, dir, o, why, sizeof why);
  if (rc != SN_OK) {
    if (err && errlen) snprintf(err, errlen, "%s", why);
    free_parts(e);
    free(e);
    return rc;
  }
  pthread_mutex_init(&e->lock, NULL);
  *out = e;
  return SN_OK;
}

int sn_encoder_dim(const sn_encoder *enc) { return enc ? sn_embedder_dim(enc->embedder) : 0; }

const char *sn_encoder_last_error(const sn_encoder *enc) { return enc ? enc->error : "sn_encoder is NULL"; }

void sn_encoder_close(sn_encoder *enc) {
  if (!enc) return;
  free_parts(enc);
  pthread_mutex_destroy(&enc->lock);
  free(enc);
}

// A call under the handle's lock, in its context, with its OpenMP threads. Handles do not wait for
// each other: each has its own context (on CUDA, its own stream).
typedef struct {
  int saved_threads;
  void *saved_context;
} call_scope;

static call_scope enter(sn_encoder *e) {
  pthread_mutex_lock(&e->lock);
  call_scope s = {omp_get_max_threads(), bind(e)};
  if (e->threads > 0) omp_set_num_threads(e->threads);
  e->error[0] = '\0';
  return s;
}

static sn_status leave(sn_encoder *e, call_scope s, sn_status rc) {
  omp_set_num_threads(s.saved_threads);
  unbind(e, s.saved_context);
  pthread_mutex_unlock(&e->lock);
  return rc;
}

// Why a text call cannot run (SN_OK when it can), into e->error.
static sn_status check_texts(sn_encoder *e, const char *const *texts, int n, const float *out) {
  if (n < 0 || (n > 0 && (!texts || !out))) {
    snprintf(e->error, sizeof e->error, WHAT_TEXTS ": n = %d, texts %s, out %s", n, texts ? "set" : "NULL",
             out ? "set" : "NULL");
    return SN_ERR_ARGUMENT;
  }
  for (int i = 0; i < n; i++)
    if (!texts[i]) {
      snprintf(e->error, sizeof e->error, WHAT_TEXTS ": texts[%d] is NULL", i);
      return SN_ERR_ARGUMENT;
    }
  if (!e->tok) {
    snprintf(e->error, sizeof e->error, WHAT_TEXTS ": the folder has no " TOKENIZER_FILE
             " (encode token ids with sn_encode_ids)");
    return SN_ERR_MODEL;
  }
  return SN_OK;
}

sn_status sn_encode(sn_encoder *enc, const char *const *texts, int n, float *out) {
  if (!enc) return SN_ERR_ARGUMENT;
  call_scope s = enter(enc);
  sn_status rc = check_texts(enc, texts, n, out);
  if (rc == SN_OK && sn_embedder_texts(enc->embedder, NULL, texts, n, out, 0, WHAT_TEXTS, enc->error,
                                       sizeof enc->error) != 0)
    rc = SN_ERR_INPUT;
  return leave(enc, s, rc);
}

// ids[offsets[i] .. offsets[i + 1]) → seqs[i], lens[i]; SN_OK, or why not into e->error.
static sn_status split_ids(sn_encoder *e, const int32_t *ids, const int64_t *offsets, int n, const float *out,
                           const int32_t **seqs, int *lens) {
  if (n < 0 || (n > 0 && (!ids || !offsets || !out))) {
    snprintf(e->error, sizeof e->error, WHAT_IDS ": n = %d with a NULL ids, offsets or out", n);
    return SN_ERR_ARGUMENT;
  }
  if (n > 0 && offsets[0] != 0) {
    snprintf(e->error, sizeof e->error, WHAT_IDS ": offsets[0] = %lld, expected 0", (long long)offsets[0]);
    return SN_ERR_ARGUMENT;
  }
  for (int i = 0; i < n; i++) {
    const int64_t len = offsets[i + 1] - offsets[i];
    if (len < 1 || len > INT32_MAX) {
      snprintf(e->error, sizeof e->error, WHAT_IDS ": sequence %d has %lld tokens (offsets %lld .. %lld)", i,
               (long long)len, (long long)offsets[i], (long long)offsets[i + 1]);
      return SN_ERR_INPUT;
    }
    seqs[i] = ids + offsets[i];
    lens[i] = (int)len;
  }
  return SN_OK;
}

sn_status sn_encode_ids(sn_encoder *enc, const int32_t *ids, const int64_t *offsets, int n, float *out) {
  if (!enc) return SN_ERR_ARGUMENT;
  const int32_t **seqs = mallocCheck((size_t)SN_MAX(n, 1) * sizeof *seqs);
  int *lens = mallocCheck((size_t)SN_MAX(n, 1) * sizeof *lens);
  call_scope s = enter(enc);
  sn_status rc = split_ids(enc, ids, offsets, n, out, seqs, lens);
  if (rc == SN_OK && sn_embedder_ids(enc->embedder, seqs, lens, n, out, WHAT_IDS, enc->error, sizeof enc->error) != 0)
    rc = SN_ERR_INPUT;
  rc = leave(enc, s, rc);
  free(seqs);
  free(lens);
  return rc;
}
