// sn_embed: embeds JSONL inputs with a Hugging Face model folder and writes an (N, D) float32 .npy,
// row i for input line i (blank lines skipped), L2-normalised unless --no-normalize.
//   sn_embed --model DIR --input FILE.jsonl --out FILE.npy [--pooling last|mean|cls]
//            [--no-normalize] [--device cpu|cuda] [--batch N] [--threads N]
//            [--prompt TEMPLATE] [--max-len N]
// Each line is {"input_ids": [...]} (used as given) or {"text": ..., "title"?: ...}, tokenized with
// DIR's tokenizer through the prompt template as training does (the tokenizer's special tokens, EOS
// appended for decoders, the text cut to --max-len keeping the template's tail). Sequences are
// embedded in batches of N, packed (no padding).
#define _GNU_SOURCE
#include <cJSON.h>
#include <omp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "data.h"
#include "embed_defaults.h"
#include "export.h"
#include "model.h"
#include "npy.h"
#include "tokenizer.h"

#define DEFAULT_BATCH 32
#define ERR_LEN 1024
#define LINE_PREVIEW 60  // characters of a bad line quoted in its error message

typedef struct {
  const char *model_dir, *input, *out, *device;
  const char *pooling;  // NULL: the export's (1_Pooling), else the architecture's default
  const char *prompt;   // template for "text" lines; NULL: the export's prompt, else "{text}"
  int normalize;        // -1: as the export says (a Normalize module), else 1
  int batch, threads, max_len;
} embed_args;

static void usage(FILE *f) {
  fprintf(f,
          "usage: sn_embed --model DIR --input FILE.jsonl --out FILE.npy [options]\n"
          "  --model DIR          Hugging Face model folder (config.json + safetensors)\n"
          "  --input FILE         JSONL, one {\"input_ids\": [...]} or {\"text\": ...} per line\n"
          "  --out FILE           (N, D) float32 .npy, row i for input line i\n"
          "  --pooling MODE       last | mean | cls (default: the export's 1_Pooling, else last for\n"
          "                       decoders, cls for encoders)\n"
          "  --no-normalize       write raw pooled vectors instead of L2-normalised ones (default:\n"
          "                       normalised unless the export's modules.json has no Normalize)\n"
          "  --device DEV         cpu | cuda (default cpu)\n"
          "  --batch N            sequences per forward pass (default %d)\n"
          "  --threads N          CPU threads (default: OpenMP's)\n"
          "  --prompt TEMPLATE    template of \"text\" lines, with {text} and {title} (default: the\n"
          "                       prompt the tower was trained with, from its export, else {text})\n"
          "  --max-len N          tokens of a \"text\" line, specials included (default: the export's\n"
          "                       max_seq_length, else the model's max_position_embeddings)\n"
          "  --help, -h           this text\n"
          "  --version            the scalingnote version\n",
          DEFAULT_BATCH);
}

#define MAX_FLAG_COUNT (1 << 30)  // batch, threads, length: the model's limits are checked later

static int parse_positive(const char *flag, const char *s) { return (int)sn_flag_i64(flag, s, 1, MAX_FLAG_COUNT); }

static embed_args parse_args(int argc, char **argv) {
  embed_args a = {.device = "cpu", .normalize = -1, .batch = DEFAULT_BATCH, .threads = 0};
  sn_cli_init("sn_embed", usage);
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    sn_cli_std_flag(f);
    if (strcmp(f, "--no-normalize") == 0) {
      a.normalize = 0;
      continue;
    }
    const char **str_slot = strcmp(f, "--model") == 0     ? &a.model_dir
                            : strcmp(f, "--input") == 0   ? &a.input
                            : strcmp(f, "--out") == 0     ? &a.out
                            : strcmp(f, "--device") == 0  ? &a.device
                            : strcmp(f, "--pooling") == 0 ? &a.pooling
                            : strcmp(f, "--prompt") == 0  ? &a.prompt
                                                          : NULL;
    int is_int = strcmp(f, "--batch") == 0 || strcmp(f, "--threads") == 0 || strcmp(f, "--max-len") == 0;
    if (!str_slot && !is_int) sn_usage_error("unknown argument '%s'", f);
    if (i + 1 >= argc) sn_usage_error("%s needs a value", f);
    const char *v = argv[++i];
    if (str_slot) *str_slot = v;
    else if (strcmp(f, "--batch") == 0) a.batch = parse_positive(f, v);
    else if (strcmp(f, "--max-len") == 0) a.max_len = parse_positive(f, v);
    else a.threads = parse_positive(f, v);
  }
  if (!a.model_dir) sn_usage_error("%s is required", "--model");
  if (!a.input) sn_usage_error("%s is required", "--input");
  if (!a.out) sn_usage_error("%s is required", "--out");
  return a;
}

static sn_pooling pooling_mode(const char *name, sn_pooling exported) {
  if (!name) return exported;
  sn_pooling p;
  if (sn_pooling_parse(name, &p) != 0) sn_usage_error("unknown pooling '%s' (valid: last|mean|cls)", name);
  return p;
}

// ---- input ------------------------------------------------------------------------------------

// All sequences back to back; seq b is ids[starts[b] .. starts[b+1]).
typedef struct {
  int32_t *ids;
  size_t n, cap;
  int64_t *starts;  // (count + 1)
  int *lines;       // (count) input line of each sequence, for messages
  int count, cap_seqs;
} sequences;

static void append_id(sequences *s, int32_t id) {
  if (s->n == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 4096;
    s->ids = reallocCheck(s->ids, s->cap * sizeof(int32_t));
  }
  s->ids[s->n++] = id;
}

static void end_sequence(sequences *s, int line) {
  if (s->count + 1 >= s->cap_seqs) {
    s->cap_seqs = s->cap_seqs ? 2 * s->cap_seqs : 256;
    s->starts = reallocCheck(s->starts, (size_t)s->cap_seqs * sizeof(int64_t));
    s->lines = reallocCheck(s->lines, (size_t)s->cap_seqs * sizeof(int));
  }
  s->lines[s->count] = line;
  s->starts[++s->count] = (int64_t)s->n;
}

typedef struct {
  const char *path;
  int line;
  const char *text;  // the line, for messages
} line_ctx;

// What "text" lines need: the model folder's tokenizer and the prompt, loaded at the first one.
typedef struct {
  const embed_args *args;
  const sn_model_config *cfg;
  sn_tokenizer *tok;
  sn_text_encoder enc;
  sn_prompt *prompt;
  int32_t *ids;
  size_t n, cap;
} text_encoder;

static _Noreturn void line_error(const line_ctx *c, const char *what) {
  sn_bad_input("%s:%d: %s (line starts: %.*s)", c->path, c->line, what, LINE_PREVIEW, c->text);
}

// {"input_ids": [int, ...]}: ids checked against the vocabulary and the model's position limit.
static void read_input_ids(sequences *s, const cJSON *arr, const line_ctx *c, int vocab, int max_len) {
  if (!cJSON_IsArray(arr)) line_error(c, "expected \"input_ids\" to be an array of integers");
  int k = 0;
  const cJSON *v;
  cJSON_ArrayForEach(v, arr) {
    char msg[256];
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble) {
      snprintf(msg, sizeof msg, "expected input_ids[%d] to be an integer", k);
      line_error(c, msg);
    }
    double id = v->valuedouble;
    if (id < 0 || id >= vocab) {
      snprintf(msg, sizeof msg, "input_ids[%d] = %.0f is outside the vocabulary [0, %d)", k, id, vocab);
      line_error(c, msg);
    }
    append_id(s, (int32_t)id);
    k++;
  }
  if (k == 0) line_error(c, "input_ids is empty: every sequence needs at least one token");
  if (max_len > 0 && k > max_len) {
    char msg[160];
    snprintf(msg, sizeof msg, "%d tokens, more than the model's max_position_embeddings %d", k, max_len);
    line_error(c, msg);
  }
}

static void text_encoder_init(text_encoder *te, const line_ctx *c) {
  char err[ERR_LEN];
  te->tok = sn_tokenizer_load(te->args->model_dir, err, sizeof err);
  if (!te->tok) {
    char msg[ERR_LEN + 64];
    snprintf(msg, sizeof msg, "a \"text\" line needs the model folder's tokenizer: %s", err);
    line_error(c, msg);
  }
  te->enc = sn_text_encoder_from_tokenizer(te->tok);
  int decoder = sn_arch_is_decoder(te->cfg->arch);
  sn_prompt_spec spec = {.template_str = te->args->prompt, .max_len = te->args->max_len, .add_special = 1,
                         .append_eos = decoder};
  te->prompt = sn_prompt_create(&spec, &te->enc, err, sizeof err);
  if (!te->prompt) sn_bad_input("--prompt: %s", err);
}

// {"text": str, "title"?: str}: encoded like training encodes it, then checked like input_ids.
static void read_text(sequences *s, text_encoder *te, const cJSON *obj, const line_ctx *c, int vocab) {
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(obj, "text");
  const cJSON *title = cJSON_GetObjectItemCaseSensitive(obj, "title");
  if (!cJSON_IsString(text)) line_error(c, "expected \"text\" to be a string");
  if (title && !cJSON_IsString(title)) line_error(c, "expected \"title\" to be a string");
  if (!te->prompt) text_encoder_init(te, c);
  int truncated = 0;
  sn_prompt_encode(te->prompt, title ? title->valuestring : "", text->valuestring, &te->ids, &te->n,
                   &te->cap, &truncated);
  if (te->n == 0) line_error(c, "the text encodes to no tokens");
  for (size_t k = 0; k < te->n; k++) {
    if (te->ids[k] < 0 || te->ids[k] >= vocab) {
      char msg[160];
      snprintf(msg, sizeof msg, "token id %d of the tokenizer is outside the model's vocabulary [0, %d)",
               te->ids[k], vocab);
      line_error(c, msg);
    }
    append_id(s, te->ids[k]);
  }
}

// max_len: longest sequence the model takes (0: no limit).
static sequences read_jsonl(const char *path, const embed_args *args, const sn_model_config *cfg,
                            int max_len) {
  const int vocab = cfg->vocab;
  text_encoder te = {.args = args, .cfg = cfg};
  FILE *f = fopenCheck(path, "r");
  sequences s = {0};
  s.cap_seqs = 256;
  s.starts = callocCheck((size_t)s.cap_seqs, sizeof(int64_t));
  s.lines = callocCheck((size_t)s.cap_seqs, sizeof(int));
  char *buf = NULL;
  size_t cap = 0;
  ssize_t len;
  int line = 0;
  while ((len = getline(&buf, &cap, f)) != -1) {
    line++;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = '\0';
    size_t skip = strspn(buf, " \t");
    if (skip == (size_t)len) continue;  // blank line
    line_ctx c = {.path = path, .line = line, .text = buf + skip};
    // require_null_terminated: trailing text after the object is an error, not ignored
    cJSON *obj = cJSON_ParseWithLengthOpts(buf, (size_t)len + 1, NULL, 1);
    if (!obj || !cJSON_IsObject(obj)) line_error(&c, "expected a JSON object such as {\"input_ids\": [1, 2, 3]}");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(obj, "input_ids");
    if (ids) {
      read_input_ids(&s, ids, &c, vocab, max_len);
    } else if (cJSON_GetObjectItemCaseSensitive(obj, "text")) {
      read_text(&s, &te, obj, &c, vocab);
    } else {
      line_error(&c, "expected a key \"input_ids\" (array of token ids) or \"text\" (a string)");
    }
    end_sequence(&s, line);
    cJSON_Delete(obj);
  }
  free(buf);
  fcloseCheck(f, path);
  if (te.prompt) sn_prompt_free(te.prompt);
  if (te.tok) sn_tokenizer_free(te.tok);
  free(te.ids);
  if (s.count == 0) sn_bad_input("%s: no input lines", path);
  return s;
}

static void free_sequences(sequences *s) {
  free(s->ids);
  free(s->starts);
  free(s->lines);
}

// ---- embedding --------------------------------------------------------------------------------

int main(int argc, char **argv) {
  embed_args args = parse_args(argc, argv);
  sn_flag_path_kind("--model", args.model_dir, 1);
  sn_export_check_model_folder(args.model_dir, "--model");
  sn_flag_path_kind("--input", args.input, 0);
  if (args.threads > 0) omp_set_num_threads(args.threads);
  const sn_ops *ops = sn_ops_by_name(args.device);
  sn_model *m = sn_model_load(args.model_dir, ops);
  const sn_model_config *c = &m->cfg;
  // Defaults from the export's sentence-transformers files: as the tower was trained.
  char derr[ERR_LEN];
  sn_embed_defaults exported;
  if (sn_embed_defaults_read(args.model_dir, c, &exported, derr, sizeof derr) != 0) sn_bad_input("%s", derr);
  const sn_pooling pooling = pooling_mode(args.pooling, exported.pooling);
  if (!args.prompt) args.prompt = exported.prompt;
  if (!args.max_len) args.max_len = exported.max_len;
  if (args.normalize < 0) args.normalize = exported.normalize;
  if (c->max_positions > 0 && args.max_len > c->max_positions)
    sn_bad_input("--max-len %d is more than the model's %d positions (its max_position_embeddings): use at most %d",
                 args.max_len, c->max_positions, c->max_positions);
  const int max_len = sn_arch_is_decoder(c->arch) ? 0 : c->max_positions;
  sequences seqs = read_jsonl(args.input, &args, c, max_len);

  // The workspace fits the largest batch, sized once.
  int max_batch_tokens = 0;
  for (int b0 = 0; b0 < seqs.count; b0 += args.batch) {
    int b1 = SN_MIN(b0 + args.batch, seqs.count);
    int64_t tokens = seqs.starts[b1] - seqs.starts[b0];
    if (tokens > INT32_MAX) sn_bad_input("%s: batch at line %d has too many tokens", args.input, seqs.lines[b0]);
    max_batch_tokens = SN_MAX(max_batch_tokens, (int)tokens);
  }
  const int D = sn_model_out_dim(m), max_seqs = SN_MIN(args.batch, seqs.count);  // D: output width
  sn_acts *acts = sn_acts_new(m, max_batch_tokens, max_seqs);
  sn_tokens tok;
  sn_tokens_alloc(&tok, ops, max_batch_tokens, max_seqs);
  float *pooled = ops->alloc((size_t)max_seqs * D * sizeof(float));  // (B, D) fp32, backend
  float *out = mallocCheck((size_t)seqs.count * D * sizeof(float));  // (N, D) host
  int32_t *cu = mallocCheck((size_t)(max_seqs + 1) * sizeof(int32_t));
  sn_log("sn_embed: %d sequences, %s model, pooling %s%s, device %s", seqs.count,
         sn_arch_name(c->arch), sn_pooling_name(pooling),
         args.normalize ? ", L2-normalised" : "", ops->name);

  const double t0 = sn_now_s();
  for (int b0 = 0; b0 < seqs.count; b0 += args.batch) {
    const int b1 = SN_MIN(b0 + args.batch, seqs.count), B = b1 - b0;
    for (int b = 0; b <= B; b++) cu[b] = (int32_t)(seqs.starts[b0 + b] - seqs.starts[b0]);
    char what[512];
    snprintf(what, sizeof what, "%s (lines %d-%d)", args.input, seqs.lines[b0], seqs.lines[b1 - 1]);
    sn_tokens_upload(&tok, ops, seqs.ids + seqs.starts[b0], cu, B, c->vocab, what);
    sn_model_embed(m, acts, &tok, pooling, args.normalize, pooled);
    ops->download(out + (size_t)b0 * D, pooled, (size_t)B * D * sizeof(float));
  }
  ops->synchronize();
  const double secs = sn_now_s() - t0;
  sn_log("sn_embed: %lld tokens in %.2f s (%.0f tokens/s)", (long long)seqs.n, secs,
         secs > 0 ? (double)seqs.n / secs : 0.0);

  char err[ERR_LEN];
  const int64_t shape[2] = {seqs.count, D};
  if (sn_npy_write(args.out, SN_NPY_F32, 2, shape, out, err, sizeof err) != 0) sn_fatal("%s", err);
  char shown[PATH_MAX];
  snprintf(shown, sizeof shown, "%s", args.out);
  sn_log("sn_embed: wrote %s (%d, %d)", sn_path_normalize(shown), seqs.count, D);

  free(cu);
  free(out);
  ops->free(pooled);
  sn_tokens_free(&tok, ops);
  sn_acts_free(acts);
  sn_model_free(m);
  free_sequences(&seqs);
  sn_embed_defaults_free(&exported);
  return 0;
}
