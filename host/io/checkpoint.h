// Checkpoints: RUN/ckpt-<stage>-<step>/ holding each trained tower as a Hugging Face folder and
// state files (optimizer moments and master weights, step, RNG states, data cursor, config hash).
// A checkpoint is written into RUN/.tmp-ckpt-<stage>-<step>/, its files fsynced, a MANIFEST of every
// file (size, checksum) and a COMPLETE marker written last, then the folder is renamed into place:
// a crash or a failed write (disk full, read-only folder) leaves the previous checkpoints intact,
// and a checkpoint damaged later (a truncated tower, a deleted file) is recognised on resume.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define SN_CKPT_PATH_MAX 1200
#define SN_STATE_MAGIC "SNSTATE1"
#define SN_STATE_VERSION 2  // 2: sections checksummed with sn_hash64 (1: FNV-1a)
// Names inside a checkpoint folder.
#define SN_CKPT_STATE "state.bin"
#define SN_CKPT_MARKER "COMPLETE"
#define SN_CKPT_MANIFEST "MANIFEST"
#define SN_MANIFEST_PATH_MAX 512  // longest relative path a manifest lists

// ---- state files: a header, then named sections, each with its own checksum ------------------
typedef struct sn_state_writer sn_state_writer;
sn_state_writer *sn_state_writer_new(void);
// Adds a section. The writer keeps the pointer (no copy: cached embeddings can be gigabytes) until
// sn_state_write; sn_state_add_copy copies small data (scalars, cursors).
void sn_state_add(sn_state_writer *w, const char *name, const void *data, size_t bytes);
void sn_state_add_copy(sn_state_writer *w, const char *name, const void *data, size_t bytes);
void sn_state_add_u64(sn_state_writer *w, const char *name, uint64_t v);
// A section produced while the file is written, SN_STATE_CHUNK_BYTES at a time (a 7B model's
// optimizer state is 91 GB: it streams from the device instead of a host copy): source fills dst
// with bytes [offset, offset + bytes) of the section; ctx must live until sn_state_write.
#define SN_STATE_CHUNK_BYTES ((size_t)4 << 20)
typedef void (*sn_state_source)(const void *ctx, size_t offset, size_t bytes, void *dst);
void sn_state_add_source(sn_state_writer *w, const char *name, size_t bytes, sn_state_source source, const void *ctx);
// Streams the file durably (temp file, fsync, rename). Returns 0, or -1 with errno set.
int sn_state_write(sn_state_writer *w, const char *path);
void sn_state_writer_free(sn_state_writer *w);

typedef struct sn_state_reader sn_state_reader;
// Reads and validates a state file (magic, version, every checksum). NULL with a message in err.
// The file is mapped, not copied: sections point into the page cache, so restoring a 91 GB
// optimizer state needs no host buffer of that size.
sn_state_reader *sn_state_read(const char *path, char *err, size_t errlen);
// The same from a malloc'd buffer of len bytes, which the reader takes over (freed with it, or at
// once on failure); name is used in messages.
sn_state_reader *sn_state_parse(char *buf, size_t len, const char *name, char *err, size_t errlen);
// Section data and size, or NULL when absent.
const void *sn_state_get(const sn_state_reader *r, const char *name, size_t *bytes);
// Copies a section of exactly `bytes` bytes; exits with status 2 naming the file and section when
// it is absent or of another size.
void sn_state_get_exact(const sn_state_reader *r, const char *name, void *dst, size_t bytes);
uint64_t sn_state_get_u64(const sn_state_reader *r, const char *name);
// The name of the i-th section in file order, or NULL past the last (for listing a file).
const char *sn_state_name(const sn_state_reader *r, int i);
void sn_state_reader_free(sn_state_reader *r);

// ---- checkpoint folders ---------------------------------------------------------------------
// The folder of the checkpoint after `step` of `stage`: RUN/ckpt-<stage>-<step>, or while it is
// written (temporary = 1) RUN/.tmp-ckpt-<stage>-<step>. The one place these names are made.
void sn_ckpt_dir(const char *run_dir, int stage, int64_t step, int temporary, char *out, size_t size);
// Whether a folder name is a checkpoint's, complete or temporary (ckpt-<stage>-<step>, .tmp-ckpt-...).
int sn_ckpt_is_name(const char *name);
// Creates (empty) the temporary folder of a new checkpoint; its path goes to tmp_dir.
// Returns 0, or -1 with a message in err.
int sn_ckpt_begin(const char *run_dir, int stage, int64_t step, char *tmp_dir, size_t size,
                  char *err, size_t errlen);
// Writes the COMPLETE marker, renames the folder into place and removes all but the newest `keep`
// complete checkpoints. Returns 0, or -1 with a message in err (the temporary folder is removed and
// earlier checkpoints are untouched).
int sn_ckpt_commit(const char *run_dir, const char *tmp_dir, int stage, int64_t step, int keep,
                   char *err, size_t errlen);
// Removes a temporary folder after a failed write.
void sn_ckpt_abort(const char *tmp_dir);
// Newest complete checkpoint of run_dir (by stage, then step). A folder that does not validate
// (sn_ckpt_validate) is skipped with a warning naming what is wrong. Returns 0 and fills path/
// stage/step (the folder name's; state.bin holds the same), or -1 when there is none.
int sn_ckpt_find_latest(const char *run_dir, char *path, size_t size, int *stage, int64_t *step);
// A checkpoint folder fit to resume from: its marker; with a MANIFEST (this build's checkpoints)
// every listed file present with its size and checksum and every .json file parsing; and a state.bin
// whose sections pass their checksums. Returns 0, or -1 with what is wrong in err.
int sn_ckpt_validate(const char *dir, char *err, size_t errlen);

// ---- manifests ------------------------------------------------------------------------------
typedef struct {
  char *path;  // relative to the checkpoint folder
  uint64_t size, checksum;
} sn_manifest_entry;
typedef struct {
  sn_manifest_entry *entries;
  int n, cap;
} sn_manifest;
// Lists every regular file under dir (but the manifest and marker) into dir/MANIFEST, durably.
int sn_manifest_write(const char *dir, char *err, size_t errlen);
// Parses manifest text strictly (header, entries, self-checksum; safe relative paths, no
// duplicates). Returns 0, or -1 with err naming the line; m is empty on failure.
int sn_manifest_parse(const char *text, size_t len, sn_manifest *m, char *err, size_t errlen);
void sn_manifest_free(sn_manifest *m);
// Size and 64-bit checksum of a file's contents, streamed. Returns 0, or -1 with errno set.
int sn_file_checksum(const char *path, uint64_t *size, uint64_t *checksum);

// Copies the tokenizer files of src_dir (tokenizer.json, tokenizer_config.json, vocab files,
// special_tokens_map.json) that exist into dst_dir. Returns 0, or -1 with err.
int sn_copy_tokenizer_files(const char *src_dir, const char *dst_dir, char *err, size_t errlen);
// A checksum over the tokenizer files of dir (those sn_copy_tokenizer_files copies, by name and
// content). Returns 0, or -1 with errno set when one exists but cannot be read.
int sn_tokenizer_files_checksum(const char *dir, uint64_t *checksum);
// rm -rf for a folder this program wrote (no symlinks followed).
int sn_remove_tree(const char *path);
