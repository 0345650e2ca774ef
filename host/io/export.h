// Exported towers as the Python ecosystem loads them: the sentence-transformers side files
// (modules.json, 1_Pooling, 2_Dense for a projection, Normalize, the prompts, max_seq_length) and a
// tokenizer that transformers' AutoTokenizer runs exactly as training did (tokenizer.json's own
// pre-tokenizer, EOS appended by its post-processor for decoders). The same files give sn_embed
// and sn_eval their defaults (sn_export_read), so a trained folder needs no flags.
#pragma once
#include <stddef.h>

#include "dtype.h"
#include "safetensors.h"

#define SN_EXPORT_TOKEN_MAX 128
#define SN_EXPORT_PROMPT_MAX 1024
#define SN_EXPORT_ROLE_QUERY "query"
#define SN_EXPORT_ROLE_DOCUMENT "document"

// How a tower was trained: what the side files say.
typedef struct {
  int decoder;                 // the tokenizer must append EOS (last-token pooling reads it)
  const char *pooling;         // "last" | "mean" | "cls"
  const char *query_prompt;    // templates as trained, with {text} (and {title}); NULL = "{text}"
  const char *doc_prompt;
  // sentence-transformers' prompts are prefixes: what each template puts before an untitled text
  // (sn_prompt_render's), exact when nothing follows "{text}".
  char query_prefix[SN_EXPORT_PROMPT_MAX], doc_prefix[SN_EXPORT_PROMPT_MAX];
  const char *role;            // SN_EXPORT_ROLE_*: the prompt this tower applies by default
  int max_seq_length;          // tokens, specials included
  int hidden;                  // width the pooling reads
  int proj_dim;                // > 0: a 2_Dense module (hidden -> proj_dim) follows the pooling
  char eos_token[SN_EXPORT_TOKEN_MAX];  // decoders: the token training appends; "" = none
  int eos_id;                           // its id
  char pad_token[SN_EXPORT_TOKEN_MAX];  // what batches are padded with ("" = eos_token)
} sn_export_info;

// Writes modules.json, 1_Pooling/config.json, 3_Normalize (2_Dense is written with the weights by
// sn_export_write_dense), config_sentence_transformers.json and sentence_bert_config.json, then
// rewrites the tokenizer files already copied into dir (tokenizer.json's post-processor, a
// tokenizer_config.json naming PreTrainedTokenizerFast and the special tokens). 0, or -1 with err.
int sn_export_write(const char *dir, const sn_export_info *info, char *err, size_t errlen);

// ---- the projection as sentence-transformers' Dense module ---------------------------------------
#define SN_EXPORT_DENSE_DIR "2_Dense"
#define SN_EXPORT_DENSE_WEIGHT "linear.weight"
#define SN_EXPORT_DENSE_BIAS "linear.bias"
// Whether a tower tensor is written into 2_Dense instead of model.safetensors ("projection.*").
int sn_export_is_dense_tensor(const char *name);
// The Dense module's name for a projection tensor ("projection.weight" -> "linear.weight").
const char *sn_export_dense_name(const char *tensor);
// dir/2_Dense/{config.json, model.safetensors}: y = W x + b, W (out, in) fp32 host data.
int sn_export_write_dense(const char *dir, int in, int out, sn_dtype dtype, const float *weight,
                          const float *bias, char *err, size_t errlen);

// ---- defaults read back by sn_embed and sn_eval --------------------------------------------------
typedef struct {
  char pooling[8];     // "last" | "mean" | "cls"; "" when the folder does not say
  int normalize;       // 1 / 0, or -1 when the folder has no modules.json
  int max_seq_length;  // 0 when not stored
  char *prompt;        // the role's template (caller frees), NULL when not stored
  char role[16];       // the folder's default role ("" when not stored)
} sn_export_settings;

// Reads dir's side files for `role` (NULL: the folder's default role). Missing files leave the
// fields unset; a present but malformed file exits 2 naming it and the key.
void sn_export_read(const char *dir, const char *role, sn_export_settings *out);
// The same for callers that must not exit (the encoder library): 0, or -1 with err (out freed).
int sn_export_read_try(const char *dir, const char *role, sn_export_settings *out, char *err, size_t errlen);
void sn_export_settings_free(sn_export_settings *s);

// A model folder that does not exist: exits 2 saying models are read from local folders and, when
// the name looks like a Hugging Face Hub id (owner/name), how to download it. `what` names the flag
// or key. Returns when dir is a folder.
void sn_export_check_model_folder(const char *dir, const char *what);
