// LoRA towers: a low-rank adapter per targeted linear of a frozen decoder base,
//   y = x W^T + b + s · (x A^T) B^T,   A (r, in), B (out, r), s = alpha / r   (peft's convention)
// computed from ops as t = s · x A^T (T, r) then y += t B^T, never forming W + s B A. q, k and v
// are one fused matmul of the base, as are gate and up; their adapters add into their column
// slice of the fused output (ops->axpy_2d), so each keeps peft's own A and B.
//
// The adapter's tensors are a parameter-only sn_model (sn_lora.params: flat weights and grads,
// names "layers.<l>.self_attn.q_proj.lora_A.weight" as peft writes them after its prefix), so the
// optimizer, gradient norm, all-reduce, replica check and checkpoint take it as they take a tower.
// A tower is a view (sn_lora_tower) of the base with an adapter attached: two towers are two views
// of one base held once in memory, each with its adapter, or both with one shared adapter.
#pragma once
#include "lora_config.h"
#include "model.h"

typedef struct sn_lora {
  sn_lora_config cfg;
  float scale;        // alpha / rank
  int n_layers;
  sn_model *params;   // the adapter tensors as a parameter-only model (no forward of its own)
  size_t (*a)[SN_LORA_NTARGETS];  // (n_layers) offsets of lora_A into params; SN_NO_PARAM when absent
  size_t (*b)[SN_LORA_NTARGETS];  // (n_layers) offsets of lora_B
} sn_lora;

// A fresh adapter for `base` (a decoder; exits 2 naming `what` otherwise): A normal with std
// 1/sqrt(3·in), the standard deviation of peft's kaiming-uniform init, from the counter RNG
// (seed); B zeros, so the tower starts equal to its base.
sn_lora *sn_lora_new(const sn_model *base, const sn_lora_config *cfg, uint64_t seed, const char *what);
// The adapter's parameter table without weights, for the memory plan (base may be an sn_model_plan
// table); sn_lora_free frees it.
sn_lora *sn_lora_plan(const sn_model *base, const sn_lora_config *cfg, const char *what);
void sn_lora_free(sn_lora *l);
// The tower `base` + adapter: a view sharing base's weights (frozen: no gradients) whose backward
// accumulates into l->params->grads. Free with sn_model_free (the view only).
sn_model *sn_lora_tower(sn_model *base, sn_lora *l);
// Element count of one target's A and B in layer l of base's shape (in, out of that linear).
void sn_lora_target_dims(const sn_model_config *c, sn_lora_target t, int *in, int *out);

// ---- the fused update (model_decoder.c) -----------------------------------------------------------
// The base linear whose output y (T, ld) holds target t's columns from col0: q, k, v in q|k|v; o;
// gate, up in gate|up; down.
typedef enum { SN_LORA_LINEAR_QKV, SN_LORA_LINEAR_O, SN_LORA_LINEAR_GATE_UP, SN_LORA_LINEAR_DOWN } sn_lora_linear;
// y (T, ld) += the updates of the adapters on that linear, from its input x (T, in).
void sn_lora_forward(sn_model *m, sn_acts *a, int layer, sn_lora_linear lin, void *y, const void *x, int T);
// From dy (T, ld), the gradient of that linear's output: dA, dB accumulated into the adapter's
// grads and dx (T, in) += the adapters' share (after the base linear wrote its own).
void sn_lora_backward(sn_model *m, sn_acts *a, int layer, sn_lora_linear lin, const void *dy, const void *x,
                      void *dx, int T);
// Dropout (peft's lora_dropout, on x before A) for the next forward with a and its backward: on,
// with masks from key (one stream per layer and target, so a recomputed forward or the backward
// re-derives them), or off (inference: the default of a fresh workspace). No effect at dropout 0.
void sn_lora_set_dropout(sn_acts *a, int on, uint64_t key);
// After layer l's backward: the adapter's layer-gradient callback (overlapped all-reduce).
void sn_lora_layer_done(sn_model *m, int layer);

// ---- export and import (model_lora_io.c) ----------------------------------------------------------
// The merged tower W + s·B·A (every other tensor the base's) as a Hugging Face folder, in dtype.
// Written as sn_model_export writes (no untied lm_head). Merges one tensor at a time in a backend scratch of that tensor's size: no second copy of the base
// on the device. Returns 0, or -1 with err.
int sn_lora_save_merged(const sn_model *tower, const char *dir, sn_dtype dtype, char *err, size_t errlen);
// A peft adapter folder: adapter_config.json and adapter_model.safetensors (fp32), loadable by
// PeftModel.from_pretrained(AutoModel.from_pretrained(base), dir). base_name goes into
// base_model_name_or_path. Returns 0, or -1 with err.
int sn_lora_save_peft(const sn_lora *l, const char *dir, const char *base_name, char *err, size_t errlen);
// Loads a peft adapter folder for `base` (exits 2 naming the file and key or tensor on bad input:
// unsupported options, a shape that does not fit base, a missing tensor).
sn_lora *sn_lora_load_peft(const char *dir, const sn_model *base);
