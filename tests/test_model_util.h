// Model-level helpers shared by the C tests (test_util.h has the generic ones): single-element and
// whole-buffer reads of backend tensors, a test-only spread of a model's weights, and the fixture
// loader that fails the test on a missing or bad .npy file.
#pragma once
#include <stddef.h>

#include "model.h"
#include "npy.h"
#include "test_util.h"

// The backend a model test runs on, from its arguments: none → the CPU; "cuda" → the CUDA backend,
// or a skip (exit 77) without one; anything else → usage on stderr and exit 2.
const sn_ops *sn_test_backend_from_args(int argc, char **argv, const char *program);
// The backend a fixture test runs on, from the environment: SN_TEST_DEVICE=cuda → the CUDA backend,
// or a skip (exit 77) without one; unset or anything else → the CPU.
const sn_ops *sn_test_backend_from_env(void);
// Skips the test (exit 77) when the fixture file `path` is missing, saying which script makes it.
void sn_test_require_fixture(const char *path, const char *maker);
// tok allocated on ops and filled with B packed sequences of lens[b] random ids below vocab; returns
// the token count T. Free with sn_tokens_free.
int sn_test_random_tokens(sn_tokens *tok, const sn_ops *ops, const int *lens, int B, int vocab, sn_test_rng *rng);
// Host fp32 copy of n storage-dtype elements at src (backend memory). Caller frees.
float *sn_test_download(const sn_ops *ops, const void *src, size_t n);
// Element i of a storage-dtype buffer of m (weights or grads), and a write of weight i.
float sn_test_get_elem(const sn_model *m, const void *buf, size_t i);
void sn_test_set_weight(sn_model *m, size_t i, float v);
// A tiny tower of two layers and a vocabulary of 50 for model tests: the given widths, the family's
// activation (GELU for BERT, SiLU otherwise), RoPE theta 1e4, norm eps 1e-6, 2 token types, no
// biases, untied, no special tokens. Tests set what they vary on the result.
sn_model_config sn_test_tiny_config(sn_arch arch, int hidden, int heads, int kv_heads, int head_dim, int intermediate,
                                    int max_positions);
// Test-only edit of m's weights: matrices N(0, matrix_std), 1-D tensors (norm weights, biases)
// jittered by N(0, vector_std).
void sn_test_randomise(sn_model *m, sn_test_rng *rng, float matrix_std, float vector_std);
// DIR/FILE as an .npy array; prints FAIL and exits 1 when it cannot be read.
void sn_test_load_npy(const char *dir, const char *file, sn_npy_array *a);
