// libscalingnote: embeds queries (or any text) with an exported scalingnote tower, for a serving
// process. The same path as `sn_embed` (tokenizer, prompt, pooling, projection, normalisation and
// length as the export's sentence-transformers files say), so the vectors equal sn_embed's: bit for
// bit on the CPU, within bf16 rounding on CUDA.
//
//   sn_encoder_options o;
//   sn_encoder_options_init(&o);
//   o.device = "cpu";
//   sn_encoder *enc;
//   char err[SN_ENCODER_ERR_LEN];
//   if (sn_encoder_open("run/final/student", &o, &enc, err, sizeof err) != SN_OK) { puts(err); ... }
//   float *out = malloc(n * sn_encoder_dim(enc) * sizeof(float));
//   if (sn_encode(enc, texts, n, out) != SN_OK) puts(sn_encoder_last_error(enc));
//   sn_encoder_close(enc);
//
// Contract
// - Errors are returned, never exit(): every call returns an sn_status; a failed open writes its
//   message into the caller's buffer, a failed call on a handle keeps it for
//   sn_encoder_last_error. Bad input (a missing or malformed file, a wrong tensor shape, a token id
//   outside the vocabulary, a too long id sequence, a NULL argument) is a status, not a crash.
//   Exceptions, as everywhere in scalingnote: allocation failure (host or device) and CUDA runtime
//   errors abort the process with a message on stderr. Loading may print warnings on stderr
//   (tensors of the folder the tower does not use).
// - Ownership: the library owns the handle (free it with sn_encoder_close) and the string
//   sn_encoder_last_error returns (valid until the handle's next call). The caller owns every
//   input and output buffer; nothing is kept after a call returns.
// - Threads: a handle serialises its own calls (a mutex per handle), so it may be shared between
//   threads, which then wait for each other; use one handle per thread to encode in parallel.
//   Handles never wait for each other: on CUDA each has its own stream, scratch and cuBLASLt plans
//   (docs/DESIGN.md, "The encoder library"), so their calls, graph recordings and replays overlap
//   on the GPU, and each holds its own copy of the tower's weights. On the CPU a handle's calls
//   use `threads` OpenMP threads (the calling thread's OpenMP setting is restored on return).
// - Texts are UTF-8, cut to max_length tokens (specials included) as training cuts them: the text,
//   never the prompt's tail. Rows of `out` follow the input order whatever the batching.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SN_ENCODER_API __attribute__((visibility("default")))
#else
#define SN_ENCODER_API
#endif

#define SN_ENCODER_ERR_LEN 1024  // a buffer this long holds any message the library writes

typedef enum {
  SN_OK = 0,
  SN_ERR_ARGUMENT = 1,  // a NULL pointer, a negative count, an option out of range
  SN_ERR_MODEL = 2,     // the folder: missing or malformed config, weights, tokenizer or side files
  SN_ERR_DEVICE = 3,    // the device is not available (no GPU, a build without CUDA)
  SN_ERR_INPUT = 4,     // an id outside the vocabulary, an empty or too long id sequence
} sn_status;

typedef struct sn_encoder sn_encoder;

typedef struct {
  const char *device;  // "cpu" (NULL too) or "cuda"
  int max_batch;       // sequences per forward pass; a call with more runs several (0: 32)
  int max_length;      // tokens per sequence, specials included (0: the export's max_seq_length,
                       //   else the tower's max_position_embeddings, else 8192)
  int threads;         // OpenMP threads of the CPU backend and of tokenisation (0: OpenMP's default)
  const char *prompt;  // template with {text} (NULL: the one the tower was trained with, from its
                       //   export, else "{text}"); a template without {text} is a prefix
  const char *pooling; // "last" | "mean" | "cls" (NULL: the export's, else the architecture's)
  int normalize;       // 1 / 0: L2-normalise or not (-1: as the export's modules.json says)
  int graphs;          // CUDA: 1 (default) records the forward of each batch shape seen twice as a
                       //   CUDA graph and replays it (one launch, the same results); 0: none
} sn_encoder_options;

// Fills o with the defaults above (everything from the export, CPU).
SN_ENCODER_API void sn_encoder_options_init(sn_encoder_options *o);

// Loads the exported tower in dir (config.json, model.safetensors, tokenizer.json and the
// sentence-transformers files sn_train writes; any Hugging Face folder of a supported architecture
// works, with the architecture's defaults) and sizes its workspace for max_batch sequences of
// max_length tokens. opts NULL: the defaults. On success *out is the handle; otherwise *out is NULL
// and err (errlen bytes, may be NULL) says what is wrong, naming the file and field.
SN_ENCODER_API sn_status sn_encoder_open(const char *dir, const sn_encoder_options *opts, sn_encoder **out,
                                         char *err, size_t errlen);

// Width of the embeddings: the projection's output width for a student with one, else the hidden size.
SN_ENCODER_API int sn_encoder_dim(const sn_encoder *enc);

// n texts → out (n, sn_encoder_dim) float32, row-major, row i for texts[i]. Tokenised with the
// folder's tokenizer through the prompt (EOS appended for decoder towers, as training does).
// n = 0 is a no-op. A folder without tokenizer.json gives SN_ERR_MODEL here (ids still work).
SN_ENCODER_API sn_status sn_encode(sn_encoder *enc, const char *const *texts, int n, float *out);

// The same from token ids, used as given (no prompt, no specials added): sequence i is
// ids[offsets[i] .. offsets[i + 1]), offsets has n + 1 entries starting at 0. Each sequence needs
// 1..max_length ids of the tower's vocabulary.
SN_ENCODER_API sn_status sn_encode_ids(sn_encoder *enc, const int32_t *ids, const int64_t *offsets, int n,
                                       float *out);

// The message of the handle's last failed call ("" when it succeeded).
SN_ENCODER_API const char *sn_encoder_last_error(const sn_encoder *enc);

// Frees the handle and its workspace (host and device). NULL is a no-op.
SN_ENCODER_API void sn_encoder_close(sn_encoder *enc);

// "ok", "argument", "model", "device", "input" (for logs).
SN_ENCODER_API const char *sn_status_name(sn_status s);
// The scalingnote version ("0.1.0").
SN_ENCODER_API const char *sn_encoder_version(void);

#ifdef __cplusplus
}
#endif
