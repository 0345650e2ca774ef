// Training data: JSONL text → prompt-templated, truncated token sequences cached as memory-mapped
// shards → packed per-rank batches with hard negatives, resumable from a plain cursor.
//
// The trainer calls, in order:
//   1. sn_train_examples_load(&ex, paths, n, skip_bad_lines, max_line_bytes)    text layer
//   2. sn_text_encoder_from_tokenizer(tok) per tower tokenizer                   tokenizer glue
//   3. sn_train_examples_query_items / _doc_items → sn_token_set_load_or_build() token layer
//        (one query set per tower tokenizer, one doc set; rank 0 builds, others wait)
//   4. s = sn_sampler_init(&cfg, &ex, &query_set, &doc_set)                        sampler
//        (sn_sampler_set_cursor(s, &saved, …) when resuming)
//   5. each step: const sn_batch *b = sn_sampler_next_or_die(s);
//        (sn_token_set_pack() packs another query set, e.g. the teacher's, for b->example_index)
//   6. on checkpoint: sn_sampler_get_cursor(s, &cursor) → store the struct's bytes
//   7. sn_sampler_free, sn_token_set_close, sn_train_examples_free.
// (sn_token_set_load_or_build_or_die is the exiting form of step 3.)
//
// Functions that parse or validate return an error string instead of exiting (the fuzz target and
// the tests drive them); the *_load wrappers print "error: FILE:LINE: what was expected" and exit 2.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "tokenizer.h"

// Writes a message into err (errlen bytes; nothing when err is NULL): the data layer's error path.
void sn_data_errorf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

// ================================================================================================
// Text layer (data_jsonl.c)
// ================================================================================================
// A line is FlagEmbedding's {"query": str, "pos": [doc, …], "neg": [doc, …]} ("neg" optional, may
// be empty; other keys are ignored). A doc is a string (its text; title "") or an object
// {"title": str (optional, "" when absent), "text": str}. Blank lines are ignored.
// FlagEmbedding's optional fields: "prompt" (a non-empty string) replaces data.query_prompt for
// this line's query: a template when it holds "{text}" (exactly once), else an instruction put in
// front of the query (FlagEmbedding's default query_instruction_format "{}{}"). "pos_scores" and
// "neg_scores" are teacher scores: arrays of finite numbers as long as "pos" / "neg" (a missing
// "neg" counts as empty); stage1.kd_weight > 0 distils them (each kept doc keeps its score).
// Rejected (one error naming file:line): malformed JSON or trailing characters after the object,
// invalid UTF-8 or a NUL byte anywhere in the line, a missing/non-string/empty "query", a missing,
// non-array or empty "pos", a non-array "neg", a doc that is neither a string nor an object with a
// string "text" (and a string "title" if present), a line longer than max_line_bytes, a "prompt"
// that is not a non-empty string or holds "{text}" more than once, and "pos_scores"/"neg_scores"
// that are not arrays of finite numbers of the length of "pos"/"neg".
// Documents are deduplicated by (title, text): examples refer to indices into `docs`, so a doc that
// appears in many examples is tokenized once. A negative equal to one of the same example's
// positives is dropped (it would be a false negative), as are repeated positives within a line.

#define SN_DATA_DEFAULT_MAX_LINE_BYTES ((size_t)1 << 24)  // 16 MiB: far above any sane example
#define SN_DATA_ERR_LEN 512                                // size of the error buffers below

typedef struct {
  char *title;  // "" when the source had none
  char *text;
  uint64_t hash;  // of (title, text); used by the dedup table
} sn_doc;

typedef struct {
  char *query;
  char *query_template;  // from the line's "prompt" (always with "{text}"); NULL: data.query_prompt
  int has_scores;        // the line had "pos_scores" and, unless it has no negatives, "neg_scores"
  int64_t refs_begin;  // into sn_train_examples.doc_refs: n_pos positives, then n_neg negatives
  int32_t n_pos, n_neg;
  int32_t file_index;  // into sn_train_examples.files
  int64_t line;        // 1-based line number in that file (for messages)
} sn_train_example;

typedef struct {
  sn_train_example *examples;
  int64_t n_examples, cap_examples;
  sn_doc *docs;  // deduplicated
  int64_t n_docs, cap_docs;
  int64_t *doc_refs;  // doc indices of all examples' positives and negatives
  float *ref_scores;  // teacher score of each doc_refs entry; NAN where the line had none
  int64_t n_refs, cap_refs;
  char **files;  // names used in messages, one per parsed file/buffer
  int n_files;
  int64_t n_lines_skipped;                      // bad lines skipped (skip_bad_lines mode)
  char first_skipped[SN_DATA_ERR_LEN];          // the first skipped line's error, "" if none
  int64_t *doc_table;                           // open-addressing dedup table: doc index or -1
  int64_t table_cap;                            // power of two
} sn_train_examples;

static inline const int64_t *sn_example_pos(const sn_train_examples *ex, int64_t i) {
  return ex->doc_refs + ex->examples[i].refs_begin;
}
static inline const int64_t *sn_example_neg(const sn_train_examples *ex, int64_t i) {
  return ex->doc_refs + ex->examples[i].refs_begin + ex->examples[i].n_pos;
}
static inline const float *sn_example_pos_scores(const sn_train_examples *ex, int64_t i) {
  return ex->ref_scores + ex->examples[i].refs_begin;
}
static inline const float *sn_example_neg_scores(const sn_train_examples *ex, int64_t i) {
  return ex->ref_scores + ex->examples[i].refs_begin + ex->examples[i].n_pos;
}

void sn_train_examples_init(sn_train_examples *ex);
void sn_train_examples_free(sn_train_examples *ex);

// Parses one JSONL buffer (a whole file's bytes; `name` is used in messages) and appends its
// examples. Never exits. Returns 0, or -1 with err = "NAME:LINE: expected …" at the first bad line
// (skip_bad_lines = 0) or when the buffer has no valid line. With skip_bad_lines, bad lines are
// counted in n_lines_skipped and the first one's message kept in first_skipped; `on_skip`, when
// non-NULL, is called with each skipped line's message. On error the examples already appended
// from earlier buffers stay valid; this buffer's may be partially appended.
int sn_train_examples_parse(sn_train_examples *ex, const char *buf, size_t len, const char *name,
                            int skip_bad_lines, size_t max_line_bytes,
                            void (*on_skip)(const char *msg), char *err, size_t errlen);

// Loads several JSONL files (memory-mapped). Bad input → "error: FILE:LINE: …", exit 2; with
// skip_bad_lines the first few skipped lines are warned about and a summary is logged at the end.
// max_line_bytes 0 = SN_DATA_DEFAULT_MAX_LINE_BYTES.
void sn_train_examples_load(sn_train_examples *ex, const char *const *paths, int n_paths,
                            int skip_bad_lines, size_t max_line_bytes);

// "FILE:LINE" of example i, for messages (static buffer, valid until the next call).
const char *sn_train_example_where(const sn_train_examples *ex, int64_t i);

// Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF) and no NUL byte: the
// offset of the first bad byte (*is_nul when it is a NUL), or len when all is well.
size_t sn_first_bad_utf8(const unsigned char *s, size_t len, int *is_nul);

// ================================================================================================
// Prompts and truncation (data_prompt.c)
// ================================================================================================
// A template is text with the placeholders "{text}" (exactly once) and "{title}" (any number of
// times); everything else is literal. Empty titles: a template line (up to '\n') that contains
// "{title}" but not "{text}" is left out together with its newline, so the doc prompt
// "Title: {title}\nText: {text}" renders "Text: <text>" for an untitled doc; elsewhere "{title}"
// becomes "". A NULL or empty template means "{text}".
//
// Encoding one item: the rendered prompt is encoded without special tokens, then the tokenizer's
// own special tokens (add_special: [CLS] … [SEP] for BERT; nothing for Qwen) are put around it,
// and with append_eos the EOS id is appended unless the tokenizer's own trailing special already is
// EOS (BERT's [SEP]) — decoder towers pool the last token, which must be EOS. When that exceeds
// max_len, the text is cut, not the template's tail: prefix+text is encoded and cut to what
// leaves room for the suffix (the template after "{text}", encoded on its own), the specials and
// EOS. An untruncated item is therefore token-identical to Hugging Face encoding the rendered
// prompt. An item that would encode to nothing (empty text, no specials, no EOS asked) gets the
// EOS id, when there is one, so every sequence has a last token to pool.

// Same contract as sn_tokenizer_encode, so tests can pass a stub and the trainer the real one.
typedef size_t (*sn_encode_fn)(const void *ctx, const char *text, size_t len, int add_special,
                               int32_t **ids, size_t *n, size_t *cap);
typedef struct {
  sn_encode_fn encode;
  const void *ctx;
  int32_t eos_id;           // -1: none (append_eos is then an error)
  const char *fingerprint;  // identity for cache keys (tokenizer kind + file hash)
} sn_text_encoder;

static inline size_t sn__tokenizer_encode_adapter(const void *ctx, const char *text, size_t len,
                                                  int add_special, int32_t **ids, size_t *n,
                                                  size_t *cap) {
  return sn_tokenizer_encode((const sn_tokenizer *)ctx, text, len, add_special, ids, n, cap);
}
static inline sn_text_encoder sn_text_encoder_from_tokenizer(const sn_tokenizer *tok) {
  sn_text_encoder e = {sn__tokenizer_encode_adapter, tok, sn_tokenizer_eos_id(tok),
                       sn_tokenizer_fingerprint(tok)};
  return e;
}

typedef struct {
  const char *template_str;  // see above
  int max_len;               // tokens, specials and EOS included
  int add_special;           // the tokenizer's post-processor tokens (BERT: 1; Qwen: either)
  int append_eos;            // decoder towers: 1
} sn_prompt_spec;

// A template split at "{text}", parsed once per token set.
typedef struct sn_prompt sn_prompt;
// Never exits; NULL with err when the template lacks "{text}" or has it twice, max_len cannot hold
// the specials + EOS + one token, or append_eos is asked of an encoder without EOS.
sn_prompt *sn_prompt_create(const sn_prompt_spec *spec, const sn_text_encoder *enc, char *err,
                            size_t errlen);
void sn_prompt_free(sn_prompt *p);
// Renders the whole prompt as text (caller frees). For logs and tests.
char *sn_prompt_render(const sn_prompt *p, const char *title, const char *text);
// Encodes one item into *ids (cleared first; realloc'd as in sn_tokenizer_encode). Returns the
// number of ids (≤ max_len) and sets *truncated. Thread-safe.
size_t sn_prompt_encode(const sn_prompt *p, const char *title, const char *text, int32_t **ids,
                        size_t *n, size_t *cap, int *truncated);

// ================================================================================================
// Token sets and shard files (data_shards.c)
// ================================================================================================
// A token set is n_seqs sequences: ids[offsets[i] .. offsets[i+1]). It lives in a shard file,
// memory-mapped read-only:
//   header (SN_SHARD_HEADER_BYTES, little-endian): magic "SNSHARD1", u32 version, u32 header
//   bytes, u64 n_seqs, u64 n_tokens, u64 offsets_at, u64 ids_at, u64 file_bytes, u64 cache_key,
//   u64 payload_checksum, u64 header_checksum; payload: i64 offsets[n_seqs+1], i32 ids[n_tokens].
// The checksum is a 64-bit multiply-rotate hash (4 lanes, xxhash-like) over the payload; a file
// whose magic, version, sizes, key or checksums disagree is stale or corrupt and is rebuilt.
// Cache key: a hash of the format version, the encoder fingerprint, the template, max_len,
// add_special, append_eos, and the item texts themselves (title and text of every item, in order,
// and an item's own template when it has one).
// Hashing the texts rather than file paths/mtimes makes a cache hit exact: it covers the files'
// content, the skip-bad-lines choice and the dedup order, and survives copying the data elsewhere.
// File name: <cache_dir>/<name>-<key as 16 hex digits>.snshard.
#define SN_SHARD_MAGIC "SNSHARD1"
#define SN_SHARD_VERSION 1u
#define SN_SHARD_HEADER_BYTES 128u

typedef struct {
  int64_t n_seqs;
  int64_t n_tokens;
  const int64_t *offsets;  // n_seqs + 1
  const int32_t *ids;
  int max_seq_len;         // longest sequence
  int64_t n_truncated;     // items cut to max_len (known when built here; -1 when mapped)
  uint64_t cache_key;
  void *map;  // mmap'd file (NULL when the set lives in memory)
  size_t map_bytes;
  char *path;
} sn_token_set;

static inline int sn_token_set_len(const sn_token_set *s, int64_t i) {
  return (int)(s->offsets[i + 1] - s->offsets[i]);
}

typedef struct {
  const char *cache_dir;  // created if missing
  const char *name;       // file name stem: "query-teacher", "docs", …
  int is_builder;         // 1: build when missing/stale; 0: wait for the builder's rename. One
                          // builder per file system: global rank 0 for a shared cache folder,
                          // local rank 0 for node-local ones.
  double wait_timeout_s;  // non-builders: give up after this long (≤ 0: SN_SHARD_DEFAULT_WAIT_S)
} sn_shard_cache_opts;
#define SN_SHARD_DEFAULT_WAIT_S 3600.0  // tokenizing a large corpus takes a while

// Items to encode: (title, text) pairs. Queries use title "". template_str, when non-NULL,
// replaces the spec's template for this item (a line's own "prompt"); it goes into the cache key.
typedef struct {
  const char *title;
  const char *text;
  const char *template_str;
} sn_text_item;
// Arrays the caller frees (free()); they point into ex, which must outlive them.
sn_text_item *sn_train_examples_query_items(const sn_train_examples *ex);  // n_examples items
sn_text_item *sn_train_examples_doc_items(const sn_train_examples *ex);    // n_docs items

uint64_t sn_token_set_cache_key(const sn_text_item *items, int64_t n, const sn_prompt_spec *spec,
                                const sn_text_encoder *enc);
// Encodes items in parallel (OpenMP) into an in-memory set (no file). Never exits on bad input;
// -1 with err if the prompt spec is invalid.
int sn_token_set_build(sn_token_set *set, const sn_text_item *items, int64_t n,
                       const sn_prompt_spec *spec, const sn_text_encoder *enc, char *err,
                       size_t errlen);
// Writes a set as a shard file (temp + fsync + rename). 0 or -1 with err.
int sn_token_set_write(const sn_token_set *set, const char *path, char *err, size_t errlen);
// Maps a shard file and checks it (magic, version, sizes, key when expected_key != 0, checksums,
// monotone offsets). 0, or -1 with err saying what is wrong (the caller then rebuilds or waits).
int sn_token_set_map(sn_token_set *set, const char *path, uint64_t expected_key, char *err,
                     size_t errlen);
// The cached path: a valid shard for this key is mapped; else the builder encodes, writes and maps
// it (warning when it replaces a corrupt or stale file), and a non-builder polls until the
// builder's file appears valid or the timeout passes. 0, or -1 with err.
int sn_token_set_load_or_build(sn_token_set *set, const sn_text_item *items, int64_t n,
                               const sn_prompt_spec *spec, const sn_text_encoder *enc,
                               const sn_shard_cache_opts *opts, char *err, size_t errlen);
// Exiting form for the trainer: failure → "error: …", exit 2.
void sn_token_set_load_or_build_or_die(sn_token_set *set, const sn_text_item *items, int64_t n,
                                       const sn_prompt_spec *spec, const sn_text_encoder *enc,
                                       const sn_shard_cache_opts *opts);
void sn_token_set_close(sn_token_set *set);

// Packs sequences `index[0..n)` of a set: ids appended into *ids (realloc'd, *cap capacity), the
// n+1 cumulative lengths into cu_seqlens (caller's array). Returns the number of tokens.
int64_t sn_token_set_pack(const sn_token_set *set, const int64_t *index, int n, int32_t **ids,
                          int64_t *cap, int32_t *cu_seqlens);

// ================================================================================================
// Pretraining text (data_text.c): stage 0's documents and their packing
// ================================================================================================
// A file whose name ends in ".jsonl" holds one document per line, {"text": str} (other keys are
// ignored, blank lines skipped); any other file is one document, its whole content. Text must be
// UTF-8 without NUL bytes; a JSONL line that is not an object with a string "text" is an error
// naming FILE:LINE. Empty documents are kept (they still add their EOS).
// Packing (sn_token_windows): each document is encoded without the tokenizer's specials, EOS is
// appended, and the documents are concatenated in file order and cut into windows of seq_len
// tokens; the last, incomplete window is dropped. A window's position t predicts token t + 1 of
// the same window (its last token predicts nothing), so documents meet inside windows as in GPT
// pretraining, and the loss of a window is what transformers computes with labels = input_ids.
typedef struct {
  sn_text_item *items;  // (n) title "", text, no template
  int64_t n, cap;
  char **buffers;       // the files' texts the items point into
  int n_buffers;
} sn_text_docs;

// Appends the documents of one file's bytes (buf is taken over and freed by sn_text_docs_free; it
// must end with a NUL after len bytes). Never exits: 0, or -1 with err = "NAME:LINE: expected ...".
int sn_text_docs_parse(sn_text_docs *d, char *buf, size_t len, const char *name, int jsonl, char *err,
                       size_t errlen);
// Loads the files (".jsonl" by name, else plain text); bad input: "error: ...", exit 2 naming `what`.
void sn_text_docs_load(sn_text_docs *d, const char *const *paths, int n_paths, const char *what);
void sn_text_docs_free(sn_text_docs *d);

// The windows of seq_len tokens over a set's sequences laid back to back (see Pretraining text):
// out is a view of docs' ids with its own offsets (sn_token_windows_close frees them; docs must
// outlive it). Returns the number of windows (0: less text than one window).
int64_t sn_token_windows(const sn_token_set *docs, int seq_len, sn_token_set *out);
void sn_token_windows_close(sn_token_set *windows);

// sn_hash64 (host/base/common.h) is the content hash of checksums and cache keys.

// ================================================================================================
// Sampler (data_batches.c)
// ================================================================================================
// Epochs: a permutation of all examples from (seed, epoch), identical on every rank. A global
// batch takes the next queries of the permutation and splits them into world_size rank batches in
// rank order; rank r keeps its own. The last global batch that cannot be completed is dropped and
// the next epoch begins.
//   fixed count (max_tokens_per_rank = 0): every rank gets B_local = global_batch_queries /
//     world_size queries (global_batch_queries must be a multiple of world_size).
//   token budget (max_tokens_per_rank > 0): each rank batch takes queries while its tokens
//     (queries + their docs) stay within the budget and, if global_batch_queries > 0, while it has
//     fewer than global_batch_queries / world_size; a single query over the budget goes alone.
//     Every rank plans the whole global batch the same way, so all agree on the split; rank
//     batches then differ in size (see rank_query_counts / rank_doc_counts).
// Per query and epoch (random streams keyed by (seed, epoch, example), so they do not depend on
// order, rank or resumption): one positive is picked among several; k negatives are drawn without
// replacement from the example's hard negatives when it has ≥ k, else all of them in random order
// followed by random repeats. An example without hard negatives gets k random docs from the pool
// of all examples' positives (not its own positives), unless forbid_random_negatives, which makes
// it an error naming FILE:LINE.
// Doc layout of a rank batch: per query, [positive, neg_1, …, neg_k] contiguously, so
// pos_index[i] = i * (k + 1). For cross-device negatives the trainer adds the doc counts of lower
// ranks: global doc index = sum(rank_doc_counts[0..r)) + local index.
// Stage 2 (queries_only): no docs; the budget counts query tokens only.

typedef struct {
  int global_batch_queries;     // B (fixed mode: > 0, multiple of world_size; budget: 0 = no cap)
  int negatives_per_query;      // k ≥ 0
  uint64_t seed;
  int world_size, rank;
  int64_t max_tokens_per_rank;  // 0 = fixed count
  int queries_only;             // stage 2
  int forbid_random_negatives;  // examples without "neg" are an error instead of random docs
} sn_sampler_config;

// The data cursor, saved in checkpoints as raw bytes. Resuming with it reproduces the exact batches.
// Streams are counter-based (keyed by seed, epoch, example), so (seed, epoch, position) is the
// whole random state; n_examples is kept to catch resuming on other data.
#define SN_DATA_CURSOR_VERSION 1u
typedef struct {
  uint32_t version;
  uint32_t reserved;     // zero (keeps the layout free of padding)
  uint64_t rng_seed;     // the random state: sampler config seed
  uint64_t epoch;
  uint64_t position;     // queries of this epoch's permutation already consumed (global)
  uint64_t steps;        // batches yielded since the start of training
  uint64_t n_examples;   // check against the data being resumed on
} sn_data_cursor;

typedef struct {
  int n_queries;             // this rank's queries
  int n_docs;                // n_queries * (k + 1); 0 when queries_only
  int64_t *example_index;    // [n_queries] index into sn_train_examples (and the query set)
  int32_t *pos_index;        // [n_queries] index of each query's positive among this rank's docs
  int64_t *doc_index;        // [n_docs] deduplicated doc index of each doc slot (mask duplicates)
  float *teacher_scores;     // [n_docs] the line's pos_scores/neg_scores entry of each doc slot;
                             // NAN for a slot whose line had none (or a random negative)
  int32_t *query_ids;        // packed query tokens
  int32_t *query_cu_seqlens; // [n_queries + 1]
  int64_t n_query_tokens;
  int max_query_len;
  int32_t *doc_ids;          // packed doc tokens
  int32_t *doc_cu_seqlens;   // [n_docs + 1]
  int64_t n_doc_tokens;
  int max_doc_len;
  int *rank_query_counts;    // [world_size]
  int *rank_doc_counts;      // [world_size]
  uint64_t epoch;            // of this batch
  uint64_t step;             // 0-based index of this batch since the start of training
} sn_batch;

typedef struct sn_sampler sn_sampler;

// Never exits; NULL with err for an invalid config or data that cannot fill one global batch.
sn_sampler *sn_sampler_create(const sn_sampler_config *cfg, const sn_train_examples *ex,
                              const sn_token_set *queries, const sn_token_set *docs, char *err,
                              size_t errlen);
// The next batch of this rank; valid until the next call. NULL with err (never exits) when an
// example has no negatives and random negatives are forbidden, or no docs can serve as random ones.
const sn_batch *sn_sampler_next(sn_sampler *s, char *err, size_t errlen);
void sn_sampler_get_cursor(const sn_sampler *s, sn_data_cursor *c);
// 0, or -1 with err when the cursor is of another version, seed or data.
int sn_sampler_set_cursor(sn_sampler *s, const sn_data_cursor *c, char *err, size_t errlen);
// Global batches in `epoch` (planned without packing tokens): for LR schedules and ETAs.
int64_t sn_sampler_steps_in_epoch(sn_sampler *s, uint64_t epoch);
void sn_sampler_free(sn_sampler *s);

// Exiting wrappers for the trainer: bad config/data → "error: …", exit 2.
sn_sampler *sn_sampler_init(const sn_sampler_config *cfg, const sn_train_examples *ex,
                            const sn_token_set *queries, const sn_token_set *docs);
const sn_batch *sn_sampler_next_or_die(sn_sampler *s);

// ================================================================================================
// Pseudo-queries (data_pseudo.c): stage 2's extra distillation texts
// ================================================================================================
// Query-like texts drawn from the deduplicated training documents (never from evaluation data): a
// document's title, and its "short text": its first sentence (up to the first line break, or up to
// a word ending in '.', '!' or '?'), cut to at most max_words words (runs of white space between
// words become one space). Empty ones are skipped. The candidates (document by document: the
// title, then the short text, as `sources` asks) are put in a seeded order (by a hash of their
// candidate number) and the first `max` kept (0 = all): the set and its order are a function of
// the data, the sources, max_words, max and seed alone.
enum { SN_PSEUDO_TITLES = 1, SN_PSEUDO_SHORT_TEXTS = 2 };  // sources: a bit mask

typedef struct {
  sn_text_item *items;  // n query items (title "", no template); titles point into ex
  int64_t n;
  char *text;           // the short texts, NUL-separated, which items point into
} sn_pseudo_queries;

void sn_pseudo_queries_build(sn_pseudo_queries *pq, const sn_train_examples *ex, unsigned sources,
                             int max_words, int64_t max, uint64_t seed);
void sn_pseudo_queries_free(sn_pseudo_queries *pq);
// The short text of `text` into out (room for strlen(text) + 1 bytes); returns its length.
size_t sn_short_text(const char *text, int max_words, char *out);
