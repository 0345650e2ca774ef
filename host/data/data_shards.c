// Token sets: parallel encoding of prompt-templated items, shard files (header + checksummed
// payload, written atomically, memory-mapped for reading), and the per-rank cache protocol.
#define _GNU_SOURCE
#include "data.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define ENCODE_CHUNK_ITEMS 8192      // items encoded in parallel before their ids are appended
#define WAIT_POLL_INTERVAL_S 0.2     // non-builders re-check the cache this often
#define CACHE_KEY_SEED 0x534e4b4559ull  // "SNKEY"
#define ITEM_TEMPLATE_MARK (-1)  // precedes an item's own template in the key (no length is -1)
#define CHECKSUM_SEED 0x534e53554dull   // "SNSUM"


// ---- items ---------------------------------------------------------------------------------------

sn_text_item *sn_train_examples_query_items(const sn_train_examples *ex) {
  sn_text_item *items = mallocCheck((size_t)(ex->n_examples + 1) * sizeof *items);
  for (int64_t i = 0; i < ex->n_examples; i++) items[i] = (sn_text_item){"", ex->examples[i].query, ex->examples[i].query_template};
  return items;
}

sn_text_item *sn_train_examples_doc_items(const sn_train_examples *ex) {
  sn_text_item *items = mallocCheck((size_t)(ex->n_docs + 1) * sizeof *items);
  for (int64_t i = 0; i < ex->n_docs; i++) items[i] = (sn_text_item){ex->docs[i].title, ex->docs[i].text, NULL};
  return items;
}

// ---- cache key -----------------------------------------------------------------------------------

static uint64_t hash_str(const char *s, uint64_t h) {
  size_t len = s ? strlen(s) : 0;
  h = sn_hash64(&len, sizeof len, h);  // length first, so concatenations cannot collide
  return sn_hash64(s ? s : "", len, h);
}
static uint64_t hash_i64(int64_t v, uint64_t h) { return sn_hash64(&v, sizeof v, h); }

uint64_t sn_token_set_cache_key(const sn_text_item *items, int64_t n, const sn_prompt_spec *spec,
                                const sn_text_encoder *enc) {
  uint64_t h = hash_i64(SN_SHARD_VERSION, CACHE_KEY_SEED);
  h = hash_str(enc->fingerprint, h);
  h = hash_i64(enc->eos_id, h);
  h = hash_str(spec->template_str && spec->template_str[0] ? spec->template_str : "{text}", h);
  h = hash_i64(spec->max_len, h);
  h = hash_i64(spec->add_special, h);
  h = hash_i64(spec->append_eos, h);
  h = hash_i64(n, h);
  for (int64_t i = 0; i < n; i++) {
    h = hash_str(items[i].title, h);
    h = hash_str(items[i].text, h);
    // Only items with their own template add to the key, so keys of plain data stay as they were.
    if (items[i].template_str) h = hash_str(items[i].template_str, hash_i64(ITEM_TEMPLATE_MARK, h));
  }
  return h ? h : 1;  // 0 means "any key" to sn_token_set_map
}

// ---- building ------------------------------------------------------------------------------------

static void scan_lengths(sn_token_set *set) {
  set->max_seq_len = 0;
  for (int64_t i = 0; i < set->n_seqs; i++) set->max_seq_len = SN_MAX(set->max_seq_len, sn_token_set_len(set, i));
}

int sn_token_set_build(sn_token_set *set, const sn_text_item *items, int64_t n,
                       const sn_prompt_spec *spec, const sn_text_encoder *enc, char *err,
                       size_t errlen) {
  memset(set, 0, sizeof *set);
  sn_prompt *prompt = sn_prompt_create(spec, enc, err, errlen);
  if (!prompt) return -1;
  int64_t *offsets = mallocCheck((size_t)(n + 1) * sizeof *offsets);
  int64_t cap_ids = 1 << 16, n_tokens = 0, n_truncated = 0;
  int32_t *ids = mallocCheck((size_t)cap_ids * sizeof *ids);
  int32_t **chunk_ids = mallocCheck(ENCODE_CHUNK_ITEMS * sizeof *chunk_ids);
  size_t *chunk_len = mallocCheck(ENCODE_CHUNK_ITEMS * sizeof *chunk_len);
  offsets[0] = 0;
  for (int64_t start = 0; start < n; start += ENCODE_CHUNK_ITEMS) {
    int64_t count = SN_MIN((int64_t)ENCODE_CHUNK_ITEMS, n - start);
    int64_t chunk_truncated = 0;
#pragma omp parallel for schedule(dynamic, 16) reduction(+ : chunk_truncated)
    for (int64_t j = 0; j < count; j++) {
      int32_t *buf = NULL;
      size_t len = 0, cap = 0;
      int truncated = 0;
      const sn_text_item *item = &items[start + j];
      // An item's own template (a line's "prompt") gets its own prompt: the specials are the same.
      sn_prompt *own = NULL;
      if (item->template_str) {
        sn_prompt_spec own_spec = *spec;
        own_spec.template_str = item->template_str;
        own = sn_prompt_create(&own_spec, enc, NULL, 0);
        if (!own) sn_fatal("item %lld: its prompt template was accepted by the parser but not here",
                           (long long)(start + j));
      }
      sn_prompt_encode(own ? own : prompt, item->title, item->text, &buf, &len, &cap, &truncated);
      sn_prompt_free(own);
      chunk_ids[j] = buf;
      chunk_len[j] = len;
      chunk_truncated += truncated;
    }
    n_truncated += chunk_truncated;
    for (int64_t j = 0; j < count; j++) {
      if (n_tokens + (int64_t)chunk_len[j] > cap_ids) {
        cap_ids = SN_MAX(2 * cap_ids, n_tokens + (int64_t)chunk_len[j]);
        ids = reallocCheck(ids, (size_t)cap_ids * sizeof *ids);
      }
      if (chunk_len[j]) memcpy(ids + n_tokens, chunk_ids[j], chunk_len[j] * sizeof *ids);
      n_tokens += (int64_t)chunk_len[j];
      offsets[start + j + 1] = n_tokens;
      free(chunk_ids[j]);
    }
  }
  free(chunk_ids);
  free(chunk_len);
  sn_prompt_free(prompt);
  set->n_seqs = n;
  set->n_tokens = n_tokens;
  set->offsets = offsets;
  set->ids = ids;
  set->n_truncated = n_truncated;
  set->cache_key = sn_token_set_cache_key(items, n, spec, enc);
  scan_lengths(set);
  return 0;
}

// ---- shard files ---------------------------------------------------------------------------------

#define HEADER_FIELD_BYTES 80  // the fields below up to `unused`; the rest is zero, for growth

typedef struct {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint64_t n_seqs;
  uint64_t n_tokens;
  uint64_t offsets_at;
  uint64_t ids_at;
  uint64_t file_bytes;
  uint64_t cache_key;
  uint64_t payload_checksum;
  uint64_t header_checksum;  // over the bytes before this field
  uint8_t unused[SN_SHARD_HEADER_BYTES - HEADER_FIELD_BYTES];
} shard_header;
_Static_assert(sizeof(shard_header) == SN_SHARD_HEADER_BYTES, "shard header layout");

static uint64_t header_checksum(const shard_header *h) {
  return sn_hash64(h, offsetof(shard_header, header_checksum), CHECKSUM_SEED);
}

int sn_token_set_write(const sn_token_set *set, const char *path, char *err, size_t errlen) {
  size_t offsets_bytes = (size_t)(set->n_seqs + 1) * sizeof(int64_t);
  size_t ids_bytes = (size_t)set->n_tokens * sizeof(int32_t);
  size_t total = SN_SHARD_HEADER_BYTES + offsets_bytes + ids_bytes;
  unsigned char *image = mallocCheck(total);
  shard_header h;
  memset(&h, 0, sizeof h);
  memcpy(h.magic, SN_SHARD_MAGIC, sizeof h.magic);
  h.version = SN_SHARD_VERSION;
  h.header_bytes = SN_SHARD_HEADER_BYTES;
  h.n_seqs = (uint64_t)set->n_seqs;
  h.n_tokens = (uint64_t)set->n_tokens;
  h.offsets_at = SN_SHARD_HEADER_BYTES;
  h.ids_at = SN_SHARD_HEADER_BYTES + offsets_bytes;
  h.file_bytes = total;
  h.cache_key = set->cache_key;
  memcpy(image + h.offsets_at, set->offsets, offsets_bytes);
  memcpy(image + h.ids_at, set->ids, ids_bytes);
  h.payload_checksum = sn_hash64(image + SN_SHARD_HEADER_BYTES, total - SN_SHARD_HEADER_BYTES, CHECKSUM_SEED);
  h.header_checksum = header_checksum(&h);
  memcpy(image, &h, sizeof h);
  int rc = sn_write_file_atomic(path, image, total);
  if (rc != 0) sn_data_errorf(err, errlen, "cannot write token shard '%s': %s", path, strerror(errno));
  free(image);
  return rc;
}

// Checks a mapped image; NULL when valid, else what is wrong.
static const char *check_image(const unsigned char *image, size_t size, uint64_t expected_key) {
  shard_header h;
  if (size < sizeof h) return "shorter than its header";
  memcpy(&h, image, sizeof h);
  if (memcmp(h.magic, SN_SHARD_MAGIC, sizeof h.magic) != 0) return "bad magic (not a token shard)";
  if (h.version != SN_SHARD_VERSION) return "another format version";
  if (h.header_checksum != header_checksum(&h)) return "header checksum mismatch";
  if (h.header_bytes != SN_SHARD_HEADER_BYTES || h.offsets_at != SN_SHARD_HEADER_BYTES)
    return "unexpected header size";
  if (h.file_bytes != size) return "file size differs from the header (truncated?)";
  if (h.n_seqs >= size / sizeof(int64_t) || h.n_tokens > size / sizeof(int32_t))
    return "counts larger than the file";
  if (h.ids_at != h.offsets_at + (h.n_seqs + 1) * sizeof(int64_t) ||
      h.file_bytes != h.ids_at + h.n_tokens * sizeof(int32_t))
    return "section offsets disagree with the counts";
  if (expected_key && h.cache_key != expected_key) return "stale (built from other inputs or settings)";
  if (h.payload_checksum != sn_hash64(image + SN_SHARD_HEADER_BYTES, size - SN_SHARD_HEADER_BYTES, CHECKSUM_SEED))
    return "payload checksum mismatch (corrupt)";
  const int64_t *offsets = (const int64_t *)(image + h.offsets_at);
  if (offsets[0] != 0 || offsets[h.n_seqs] != (int64_t)h.n_tokens) return "offsets do not span the ids";
  for (uint64_t i = 0; i < h.n_seqs; i++)
    if (offsets[i + 1] < offsets[i]) return "offsets are not increasing";
  return NULL;
}

int sn_token_set_map(sn_token_set *set, const char *path, uint64_t expected_key, char *err,
                     size_t errlen) {
  memset(set, 0, sizeof *set);
  int fd = open(path, O_RDONLY);
  if (fd < 0) {
    sn_data_errorf(err, errlen, "cannot open token shard '%s': %s", path, strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size == 0) {
    sn_data_errorf(err, errlen, "token shard '%s' is empty or cannot be read", path);
    close(fd);
    return -1;
  }
  size_t size = (size_t)st.st_size;
  void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (map == MAP_FAILED) {
    sn_data_errorf(err, errlen, "cannot mmap token shard '%s': %s", path, strerror(errno));
    return -1;
  }
  const char *why = check_image(map, size, expected_key);
  if (why) {
    sn_data_errorf(err, errlen, "token shard '%s': %s", path, why);
    munmap(map, size);
    return -1;
  }
  shard_header h;
  memcpy(&h, map, sizeof h);
  set->n_seqs = (int64_t)h.n_seqs;
  set->n_tokens = (int64_t)h.n_tokens;
  set->offsets = (const int64_t *)((const unsigned char *)map + h.offsets_at);
  set->ids = (const int32_t *)((const unsigned char *)map + h.ids_at);
  set->cache_key = h.cache_key;
  set->n_truncated = -1;
  set->map = map;
  set->map_bytes = size;
  set->path = strdupCheck(path);
  scan_lengths(set);
  return 0;
}

void sn_token_set_close(sn_token_set *set) {
  if (set->map) {
    munmap(set->map, set->map_bytes);
  } else {
    free((void *)set->offsets);
    free((void *)set->ids);
  }
  free(set->path);
  memset(set, 0, sizeof *set);
}

// ---- the cache -----------------------------------------------------------------------------------

static void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
}

int sn_token_set_load_or_build(sn_token_set *set, const sn_text_item *items, int64_t n,
                               const sn_prompt_spec *spec, const sn_text_encoder *enc,
                               const sn_shard_cache_opts *opts, char *err, size_t errlen) {
  uint64_t key = sn_token_set_cache_key(items, n, spec, enc);
  char path[4096];
  if (snprintf(path, sizeof path, "%s/%s-%016llx.snshard", opts->cache_dir, opts->name,
               (unsigned long long)key) >= (int)sizeof path) {
    sn_data_errorf(err, errlen, "cache path too long: %s/%s", opts->cache_dir, opts->name);
    return -1;
  }
  char why[SN_DATA_ERR_LEN];
  if (!opts->is_builder) {
    double timeout = opts->wait_timeout_s > 0 ? opts->wait_timeout_s : SN_SHARD_DEFAULT_WAIT_S;
    double t0 = sn_now_s();
    while (sn_token_set_map(set, path, key, why, sizeof why) != 0) {
      if (sn_now_s() - t0 > timeout) {
        sn_data_errorf(err, errlen, "waited %.0f s for the builder rank to write %s (last: %s)", timeout,
                path, why);
        return -1;
      }
      sleep_s(WAIT_POLL_INTERVAL_S);
    }
    return 0;
  }
  if (access(path, F_OK) == 0) {
    if (sn_token_set_map(set, path, key, why, sizeof why) == 0) {
      sn_log("data: %s: %lld sequences, %lld tokens (cached %s)", opts->name,
             (long long)set->n_seqs, (long long)set->n_tokens, path);
      return 0;
    }
    sn_warn("%s; rebuilding it", why);
  }
  if (sn_mkdir_p(opts->cache_dir) != 0) {
    sn_data_errorf(err, errlen, "cannot create cache folder '%s': %s", opts->cache_dir, strerror(errno));
    return -1;
  }
  double t0 = sn_now_s();
  sn_token_set built;
  if (sn_token_set_build(&built, items, n, spec, enc, err, errlen) != 0) return -1;
  int rc = sn_token_set_write(&built, path, err, errlen);
  int64_t n_truncated = built.n_truncated;
  sn_token_set_close(&built);
  if (rc != 0) return -1;
  if (sn_token_set_map(set, path, key, err, errlen) != 0) return -1;
  set->n_truncated = n_truncated;
  sn_log("data: %s: tokenized %lld items in %.1f s: %lld tokens, longest %d, %lld cut to %d → %s",
         opts->name, (long long)n, sn_now_s() - t0, (long long)set->n_tokens, set->max_seq_len,
         (long long)n_truncated, spec->max_len, path);
  return 0;
}

void sn_token_set_load_or_build_or_die(sn_token_set *set, const sn_text_item *items, int64_t n,
                                       const sn_prompt_spec *spec, const sn_text_encoder *enc,
                                       const sn_shard_cache_opts *opts) {
  char err[SN_DATA_ERR_LEN];
  if (sn_token_set_load_or_build(set, items, n, spec, enc, opts, err, sizeof err) != 0)
    sn_bad_input("%s", err);
}

int64_t sn_token_set_pack(const sn_token_set *set, const int64_t *index, int n, int32_t **ids,
                          int64_t *cap, int32_t *cu_seqlens) {
  int64_t total = 0;
  for (int i = 0; i < n; i++) total += sn_token_set_len(set, index[i]);
  if (total > INT32_MAX) sn_fatal("batch of %lld tokens overflows int32 cu_seqlens", (long long)total);
  if (total > *cap) {
    *cap = SN_MAX(total, 2 * *cap);
    *ids = reallocCheck(*ids, (size_t)*cap * sizeof **ids);
  }
  int64_t at = 0;
  cu_seqlens[0] = 0;
  for (int i = 0; i < n; i++) {
    int len = sn_token_set_len(set, index[i]);
    if (len) memcpy(*ids + at, set->ids + set->offsets[index[i]], (size_t)len * sizeof **ids);
    at += len;
    cu_seqlens[i + 1] = (int32_t)at;
  }
  return total;
}
