// sn_inspect: what is in a model folder or a .safetensors file, and dtype conversion.
//   sn_inspect PATH                                   config summary + tensor table
//   sn_inspect --rewrite IN OUT.safetensors [--dtype f32|bf16|f16]
// --rewrite reads every tensor to fp32 and writes them to one file (each tensor keeps its dtype
// unless --dtype is given). Bad input: one error line, exit status 2.
#define _GNU_SOURCE
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "model_config.h"
#include "safetensors.h"

#define ERR_LEN 1024
#define BYTES_PER_MB (1024.0 * 1024.0)
#define SHAPE_TEXT_LEN 96

static void usage(FILE *out) {
  fprintf(out,
          "usage: sn_inspect PATH                 (model folder or .safetensors file)\n"
          "       sn_inspect --rewrite IN OUT.safetensors [--dtype f32|bf16|f16]\n"
          "  PATH             prints the config summary and every tensor (name, dtype, shape)\n"
          "  --rewrite IN OUT copies the tensors of IN (a .safetensors file) to OUT\n"
          "  --dtype D        with --rewrite: convert floating tensors to f32, bf16 or f16\n"
          "                   (default: keep each tensor's dtype)\n"
          "  --help, -h       this text\n"
          "  --version        the scalingnote version\n");
}

static const char *dtype_text(sn_dtype d) {
  switch (d) {
    case SN_DTYPE_F32: return "F32";
    case SN_DTYPE_BF16: return "BF16";
    case SN_DTYPE_F16: return "F16";
  }
  return "?";
}

static int parse_dtype_arg(const char *s, sn_dtype *out) {
  static const struct { const char *name; sn_dtype dtype; } names[] = {
      {"f32", SN_DTYPE_F32}, {"bf16", SN_DTYPE_BF16}, {"f16", SN_DTYPE_F16}};
  for (size_t i = 0; i < SN_ARRAY_LEN(names); i++)
    if (strcmp(s, names[i].name) == 0) {
      *out = names[i].dtype;
      return 0;
    }
  return -1;
}

// The config.json beside the weights: PATH/config.json for a folder, else in the file's folder.
static int find_config(const char *path, char *out, size_t outlen) {
  char copy[4096];
  snprintf(copy, sizeof copy, "%s", path);
  const char *dir = sn_is_dir(path) ? path : dirname(copy);
  snprintf(out, outlen, "%s/config.json", dir);
  sn_path_normalize(out);  // printed: "model/" gives model/config.json, not model//config.json
  struct stat st;
  return stat(out, &st) == 0 && S_ISREG(st.st_mode);
}

static void print_config_summary(const char *config_path, const sn_model_config *cfg) {
  int decoder = sn_arch_is_decoder(cfg->arch);
  printf("config: %s\n", config_path);
  printf("  arch %s, layers %d, hidden %d, heads %d (kv %d, head_dim %d), intermediate %d, vocab %d\n",
         sn_arch_name(cfg->arch), cfg->n_layers, cfg->hidden, cfg->n_heads, cfg->n_kv_heads, cfg->head_dim,
         cfg->intermediate, cfg->vocab);
  printf("  max_positions %d, %s %g, norm_eps %g, act %s, tie %d, attn_bias %d, mlp_bias %d\n", cfg->max_positions,
         decoder ? "rope_theta" : "type_vocab", decoder ? (double)cfg->rope_theta : (double)cfg->type_vocab,
         (double)cfg->norm_eps, cfg->hidden_act, cfg->tie_embeddings, cfg->attn_bias, cfg->mlp_bias);
  printf("  bos %d, eos %d, pad %d; parameters (base model) %lld\n\n", cfg->bos_id, cfg->eos_id, cfg->pad_id,
         (long long)sn_config_num_params(cfg));
}

// A model folder's config.json is part of the model: a bad one is bad input (exit 2). Beside a
// lone .safetensors file it may be something else (a run's config), so it only gets a warning.
static void show_config(const char *path, const char *config_path) {
  sn_model_config cfg;
  if (sn_is_dir(path)) {
    sn_config_load_hf_dir(&cfg, config_path);
    print_config_summary(config_path, &cfg);
    return;
  }
  size_t len;
  char *text = sn_read_file(config_path, &len), err[ERR_LEN];
  if (text && sn_config_parse_hf(&cfg, text, len, config_path, err, sizeof err) == 0)
    print_config_summary(config_path, &cfg);
  else
    sn_warn("not showing the config beside the file: %s", text ? err : config_path);
  free(text);
}

static void shape_text(const sn_st_tensor *t, char *buf, size_t n) {
  size_t o = (size_t)snprintf(buf, n, "[");
  for (int d = 0; d < t->ndim && o < n; d++) o += (size_t)snprintf(buf + o, n - o, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
  if (o < n) snprintf(buf + o, n - o, "]");
}

static void open_or_die(sn_st_archive *a, const char *path) {
  char err[ERR_LEN];
  if (sn_st_open(a, path, err, sizeof err) != 0) sn_bad_input("%s", err);
}

static int inspect(const char *path) {
  char config_path[4096];
  if (find_config(path, config_path, sizeof config_path)) show_config(path, config_path);
  sn_st_archive a;
  open_or_die(&a, path);
  printf("%-64s %-5s %-24s %10s\n", "tensor", "dtype", "shape", "MB");
  int64_t numel = 0;
  uint64_t bytes = 0;
  for (int i = 0; i < a.ntensors; i++) {
    const sn_st_tensor *t = &a.tensors[i];
    char shape[SHAPE_TEXT_LEN];
    shape_text(t, shape, sizeof shape);
    printf("%-64s %-5s %-24s %10.3f\n", t->name, dtype_text(t->dtype), shape, (double)t->nbytes / BYTES_PER_MB);
    numel += t->numel;
    bytes += t->nbytes;
  }
  printf("%d tensors in %d file(s), %lld parameters, %.1f MB\n", a.ntensors, a.nfiles, (long long)numel,
         (double)bytes / BYTES_PER_MB);
  sn_st_close(&a);
  return 0;
}

static int rewrite(const char *in, const char *out, int force_dtype, sn_dtype dtype) {
  sn_st_archive a;
  open_or_die(&a, in);
  char err[ERR_LEN];
  float **data = callocCheck((size_t)a.ntensors, sizeof *data);
  sn_st_writer *w = sn_st_writer_new();
  for (int i = 0; i < a.ntensors; i++) {
    const sn_st_tensor *t = &a.tensors[i];
    data[i] = mallocCheck((size_t)t->numel * sizeof(float));
    if (sn_st_read_f32(&a, t, data[i], err, sizeof err) != 0) sn_bad_input("%s", err);
    sn_st_writer_add(w, t->name, force_dtype ? dtype : t->dtype, t->ndim, t->shape, data[i]);
  }
  if (sn_st_writer_write(w, out, err, sizeof err) != 0) sn_fatal("%s", err);
  fprintf(stderr, "wrote %d tensors to %s\n", a.ntensors, out);
  sn_st_writer_free(w);
  for (int i = 0; i < a.ntensors; i++) free(data[i]);
  free(data);
  sn_st_close(&a);
  return 0;
}

int main(int argc, char **argv) {
  sn_cli_init("sn_inspect", usage);
  for (int i = 1; i < argc; i++) sn_cli_std_flag(argv[i]);
  if (argc == 2 && argv[1][0] != '-') return inspect(argv[1]);
  if (argc >= 4 && strcmp(argv[1], "--rewrite") == 0) {
    sn_dtype dtype = SN_DTYPE_F32;
    int force = 0;
    if (argc == 6 && strcmp(argv[4], "--dtype") == 0) {
      if (parse_dtype_arg(argv[5], &dtype) != 0) sn_usage_error("--dtype '%s': expected f32, bf16 or f16", argv[5]);
      force = 1;
    } else if (argc != 4) {
      sn_usage_error("--rewrite IN OUT takes only --dtype D after it");
    }
    return rewrite(argv[2], argv[3], force, dtype);
  }
  sn_usage_error(argc == 1 ? "expected a PATH" : "unknown or incomplete arguments (first: '%s')", argv[argc > 1]);
}
