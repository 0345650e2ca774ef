// LoRA adapters: their parameter table, fresh init, tower views, and the low-rank update fused
// after each base linear (forward and backward), from ops only. Export/import: model_lora_io.c.
#include <math.h>
#include <string.h>

#include "common.h"
#include "counter_rng.h"
#include "model_internal.h"
#include "model_lora.h"

#define LORA_DECAY 0  // adapters get weight decay, as torch's AdamW gives peft's parameters

void sn_lora_target_dims(const sn_model_config *c, sn_lora_target t, int *in, int *out) {
  const int C = c->hidden, I = c->intermediate, q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
  switch (t) {
    case SN_LORA_Q: *in = C, *out = q; break;
    case SN_LORA_K:
    case SN_LORA_V: *in = C, *out = kv; break;
    case SN_LORA_O: *in = q, *out = C; break;
    case SN_LORA_GATE:
    case SN_LORA_UP: *in = C, *out = I; break;
    case SN_LORA_DOWN: *in = I, *out = C; break;
    default: sn_fatal("sn_lora_target_dims: target %d", (int)t);
  }
}

// Where target t's columns sit in its base linear's output: the fused output's width and the
// first column.
static void target_columns(const sn_model_config *c, sn_lora_target t, int *ld, int *col0) {
  const int I = c->intermediate, q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
  *col0 = 0;
  switch (t) {
    case SN_LORA_Q: *ld = q + 2 * kv; break;
    case SN_LORA_K: *ld = q + 2 * kv, *col0 = q; break;
    case SN_LORA_V: *ld = q + 2 * kv, *col0 = q + kv; break;
    case SN_LORA_GATE: *ld = 2 * I; break;
    case SN_LORA_UP: *ld = 2 * I, *col0 = I; break;
    default: *ld = c->hidden; break;  // o, down: their own output
  }
}

static const char *module_path(sn_lora_target t) {
  return t <= SN_LORA_O ? "self_attn" : "mlp";
}

// The adapter's parameter table: per layer, per targeted linear in decoder order, lora_A then
// lora_B, so a layer's tensors are contiguous (the optimizer's overlapped all-reduce needs that).
// allocate = 0: the table only (the memory plan).
static sn_lora *lora_shell(const sn_model *base, const sn_lora_config *cfg, const char *what, int allocate) {
  if (!sn_arch_is_decoder(base->cfg.arch))
    sn_bad_input("%s: LoRA towers need a decoder base (Qwen2, Llama), not %s", what, sn_arch_name(base->cfg.arch));
  if (cfg->rank <= 0) sn_bad_input("%s: LoRA rank %d must be positive", what, cfg->rank);
  if (!cfg->targets) sn_bad_input("%s: no LoRA target", what);
  sn_lora *l = callocCheck(1, sizeof *l);
  l->cfg = *cfg;
  l->scale = cfg->alpha / (float)cfg->rank;
  l->n_layers = base->cfg.n_layers;
  l->a = callocCheck((size_t)SN_MAX(l->n_layers, 1), sizeof *l->a);
  l->b = callocCheck((size_t)SN_MAX(l->n_layers, 1), sizeof *l->b);
  sn_model *p = sn_model_shell(&base->cfg, base->ops);
  // No lm_head, pooler or projection: offset 0 is an adapter tensor, not an unused one.
  p->layout->lm_head = p->layout->pooler_w = p->layout->pooler_b = SN_NO_PARAM;
  p->layout->proj_w = p->layout->proj_b = SN_NO_PARAM;
  sn_param_builder pb = {.m = p, .cap = 0};
  const int r = cfg->rank;
  for (int layer = 0; layer < l->n_layers; layer++) {
    for (int t = 0; t < SN_LORA_NTARGETS; t++) {
      l->a[layer][t] = l->b[layer][t] = SN_NO_PARAM;
      if (!(cfg->targets & (1u << t))) continue;
      int in, out;
      sn_lora_target_dims(&base->cfg, (sn_lora_target)t, &in, &out);
      const char *mod = module_path((sn_lora_target)t), *name = sn_lora_module_name((sn_lora_target)t);
      l->a[layer][t] = sn_param_add(&pb, LORA_DECAY, r, in, "layers.%d.%s.%s.lora_A.weight", layer, mod, name);
      l->b[layer][t] = sn_param_add(&pb, LORA_DECAY, out, r, "layers.%d.%s.%s.lora_B.weight", layer, mod, name);
    }
  }
  if (allocate) p->weights = base->ops->alloc(SN_MAX(p->num_elements, 1) * base->ops->storage_size);
  l->params = p;
  return l;
}

sn_lora *sn_lora_plan(const sn_model *base, const sn_lora_config *cfg, const char *what) {
  return lora_shell(base, cfg, what, 0);
}

// peft's kaiming_uniform_(a = sqrt(5)) on A (r, in) is U(-1/sqrt(in), 1/sqrt(in)): variance 1/(3 in).
#define LORA_A_VARIANCE_FANIN_DIV 3.0f

sn_lora *sn_lora_new(const sn_model *base, const sn_lora_config *cfg, uint64_t seed, const char *what) {
  sn_lora *l = lora_shell(base, cfg, what, 1);
  sn_model *p = l->params;
  const sn_ops *ops = base->ops;
  for (int i = 0; i < p->nparams; i++) {
    const sn_param *t = &p->params[i];
    void *x = sn_wptr(p, t->offset);
    // lora_A (r, in): normal with peft's init variance, one counter-RNG stream per tensor; lora_B zeros
    if (strstr(t->name, ".lora_A."))
      ops->fill_normal(x, t->count, sn_rng_stream_key(seed, (uint64_t)i),
                       1.0f / sqrtf(LORA_A_VARIANCE_FANIN_DIV * (float)t->shape[1]));
    else
      ops->fill(x, t->count, 0.0f);
  }
  ops->synchronize();
  return l;
}

void sn_lora_free(sn_lora *l) {
  if (!l) return;
  sn_model_free(l->params);
  free(l->a);
  free(l->b);
  free(l);
}

sn_model *sn_lora_tower(sn_model *base, sn_lora *l) {
  if (base->lora || base->is_view) sn_fatal("sn_lora_tower: the base is itself a LoRA tower");
  if (l->n_layers != base->cfg.n_layers) sn_fatal("sn_lora_tower: adapter and base differ in depth");
  sn_model *v = mallocCheck(sizeof *v);
  *v = *base;
  v->grads = NULL;  // frozen
  v->on_layer_grads = NULL;
  v->on_layer_grads_ctx = NULL;
  v->lora = l;
  v->is_view = 1;
  return v;
}

// ---- the fused update ---------------------------------------------------------------------------

// The targets of each base linear.
#define LORA_TARGETS_A_LINEAR 3  // the most targets one base linear holds: q, k, v of the fused projection

static int linear_targets(sn_lora_linear lin, sn_lora_target *out) {
  switch (lin) {
    case SN_LORA_LINEAR_QKV: out[0] = SN_LORA_Q, out[1] = SN_LORA_K, out[2] = SN_LORA_V; return 3;
    case SN_LORA_LINEAR_O: out[0] = SN_LORA_O; return 1;
    case SN_LORA_LINEAR_GATE_UP: out[0] = SN_LORA_GATE, out[1] = SN_LORA_UP; return 2;
    case SN_LORA_LINEAR_DOWN: out[0] = SN_LORA_DOWN; return 1;
  }
  return 0;
}

static void *elem(const sn_ops *ops, void *base, size_t offset) {
  return (char *)base + offset * ops->storage_size;
}

// t (T, r) = s · x A^T
static void scaled_down_projection(const sn_ops *ops, const sn_lora *l, void *t, const void *x, const void *A,
                                   int T, int in) {
  const int r = l->cfg.rank;
  ops->matmul(t, x, A, NULL, T, r, in, 0, 1, 0);   // (T, r) = (T, in) @ (r, in)^T
  ops->axpy_2d(t, r, t, r, T, r, l->scale, 0);      // in place: t *= s
}

void sn_lora_set_dropout(sn_acts *a, int on, uint64_t key) {
  a->lora_dropout_on = on;
  a->lora_dropout_key = key;
}

// The adapter's input: x, or its dropped copy (mask stream per layer and target) in a->lora_xd.
static const void *adapter_input(const sn_lora *l, sn_acts *a, int layer, sn_lora_target tg, const void *x,
                                 int T, int in, uint64_t *mask_key) {
  if (!a->lora_dropout_on || l->cfg.dropout <= 0) return x;
  *mask_key = sn_rng_stream_key(a->lora_dropout_key, (uint64_t)layer * SN_LORA_NTARGETS + tg);
  a->ops->dropout(a->lora_xd, x, (size_t)T * in, *mask_key, l->cfg.dropout, 0);
  return a->lora_xd;
}

// One adapted linear of one layer: its target, shapes, where its output sits in the base linear's
// (fused) output, and its tensors' offsets in the adapter buffer.
typedef struct {
  sn_lora_target tg;
  int in, out;     // A (r, in), B (out, r)
  int ld, col0;    // the base output's row width and this target's first column in it
  size_t a, b;     // offsets of lora_A and lora_B
  const void *A, *B;  // lora_A and lora_B in the adapter's weights
} lora_site;

// The sites of base linear `lin` in `layer` that the adapter targets; their count.
static int linear_sites(const sn_model *m, int layer, sn_lora_linear lin, lora_site sites[LORA_TARGETS_A_LINEAR]) {
  const sn_lora *l = m->lora;
  sn_lora_target targets[LORA_TARGETS_A_LINEAR];
  const int n = linear_targets(lin, targets);
  int count = 0;
  for (int i = 0; i < n; i++) {
    const sn_lora_target tg = targets[i];
    if (l->a[layer][tg] == SN_NO_PARAM) continue;
    lora_site *site = &sites[count++];
    site->tg = tg;
    sn_lora_target_dims(&m->cfg, tg, &site->in, &site->out);
    target_columns(&m->cfg, tg, &site->ld, &site->col0);
    site->a = l->a[layer][tg];
    site->b = l->b[layer][tg];
    site->A = sn_wptr(l->params, site->a);
    site->B = sn_wptr(l->params, site->b);
  }
  return count;
}

void sn_lora_forward(sn_model *m, sn_acts *a, int layer, sn_lora_linear lin, void *y, const void *x, int T) {
  const sn_ops *ops = m->ops;
  const sn_lora *l = m->lora;
  const int r = l->cfg.rank;
  lora_site sites[LORA_TARGETS_A_LINEAR];
  const int n = linear_sites(m, layer, lin, sites);
  for (int i = 0; i < n; i++) {
    const lora_site site = sites[i];
    const int in = site.in, out = site.out, ld = site.ld, col0 = site.col0;
    uint64_t mask_key = 0;
    const void *xin = adapter_input(l, a, layer, site.tg, x, T, in, &mask_key);
    scaled_down_projection(ops, l, a->lora_t, xin, site.A, T, in);
    // y[:, col0 : col0 + out] (T, out; row stride ld) += (T, r) @ (out, r)^T, in place
    ops->matmul_strided(elem(ops, y, (size_t)col0), ld, a->lora_t, r, site.B, r, NULL, T, out, r, 0, 1, 1);
  }
}

void sn_lora_backward(sn_model *m, sn_acts *a, int layer, sn_lora_linear lin, const void *dy, const void *x,
                      void *dx, int T) {
  const sn_ops *ops = m->ops;
  const sn_lora *l = m->lora;
  sn_model *p = l->params;
  const int r = l->cfg.rank;
  lora_site sites[LORA_TARGETS_A_LINEAR];
  const int n = linear_sites(m, layer, lin, sites);
  for (int i = 0; i < n; i++) {
    const lora_site site = sites[i];
    const int in = site.in, out = site.out, ld = site.ld, col0 = site.col0;
    const void *A = site.A, *B = site.B;
    void *dA = sn_gptr(p, site.a), *dB = sn_gptr(p, site.b);
    // g (T, out; row stride ld): this target's columns of dy, read in place
    const void *g = elem(ops, (void *)dy, (size_t)col0);
    // t = s·x A^T again (r columns: cheaper to recompute than to keep per layer and target), from
    // the dropped x when dropout is on (the same mask: the same key)
    uint64_t mask_key = 0;
    const void *xin = adapter_input(l, a, layer, site.tg, x, T, in, &mask_key);
    scaled_down_projection(ops, l, a->lora_t, xin, A, T, in);
    ops->matmul_strided(dB, r, g, ld, a->lora_t, r, NULL, out, r, T, 1, 0, 1);  // (out, r) += g^T @ t
    ops->matmul_strided(a->lora_dt, r, g, ld, B, r, NULL, T, r, out, 0, 0, 0);  // (T, r) = g @ B
    ops->axpy_2d(a->lora_dt, r, a->lora_dt, r, T, r, l->scale, 0);  // dt = s · g B
    ops->matmul(dA, a->lora_dt, xin, NULL, r, in, T, 1, 0, 1);  // (r, in) += dt^T @ x
    if (xin == x) {
      ops->matmul(dx, a->lora_dt, A, NULL, T, in, r, 0, 0, 1);  // (T, in) += dt @ A
    } else {  // through the mask: dx += dropout(dt @ A)
      ops->matmul(a->lora_dxd, a->lora_dt, A, NULL, T, in, r, 0, 0, 0);
      ops->dropout(dx, a->lora_dxd, (size_t)T * in, mask_key, l->cfg.dropout, 1);
    }
  }
}

void sn_lora_layer_done(sn_model *m, int layer) {
  sn_model *p = m->lora->params;
  if (p->on_layer_grads) p->on_layer_grads(p->on_layer_grads_ctx, layer);
}
