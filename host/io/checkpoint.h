// Checkpoints: RUN/ckpt-<stage>-<step>/ holding each trained tower as a Hugging Face folder and
// state files (optimizer moments and master weights, step, RNG states, data cursor, config hash).
// A checkpoint is written into RUN/.tmp-ckpt-<stage>-<step>/, its files fsynced, a COMPLETE marker
// written last, then the folder is renamed into place: a crash or a failed write (disk full,
// read-only folder) leaves the previous checkpoints intact.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define SN_CKPT_PATH_MAX 1200
#define SN_STATE_MAGIC "SNSTATE1"
#define SN_STATE_VERSION 2  // 2: sections checksummed with sn_hash64 (1: FNV-1a)

// ---- state files: a header, then named sections, each with its own checksum ------------------
typedef struct sn_state_writer sn_state_writer;
sn_state_writer *sn_state_writer_new(void);
// Adds a section. The writer keeps the pointer (no copy: optimizer state can be gigabytes) until
// sn_state_write; sn_state_add_copy copies small data (scalars, cursors).
void sn_state_add(sn_state_writer *w, const char *name, const void *data, size_t bytes);
void sn_state_add_copy(sn_state_writer *w, const char *name, const void *data, size_t bytes);
void sn_state_add_u64(sn_state_writer *w, const char *name, uint64_t v);
// Streams the file durably (temp file, fsync, rename). Returns 0, or -1 with errno set.
int sn_state_write(sn_state_writer *w, const char *path);
void sn_state_writer_free(sn_state_writer *w);

typedef struct sn_state_reader sn_state_reader;
// Reads and validates a state file (magic, version, every checksum). NULL with a message in err.
sn_state_reader *sn_state_read(const char *path, char *err, size_t errlen);
// Section data and size, or NULL when absent.
const void *sn_state_get(const sn_state_reader *r, const char *name, size_t *bytes);
// Copies a section of exactly `bytes` bytes; exits with status 2 naming the file and section when
// it is absent or of another size.
void sn_state_get_exact(const sn_state_reader *r, const char *name, void *dst, size_t bytes);
uint64_t sn_state_get_u64(const sn_state_reader *r, const char *name);
void sn_state_reader_free(sn_state_reader *r);

// ---- checkpoint folders ---------------------------------------------------------------------
// The folder of the checkpoint after `step` of `stage`: RUN/ckpt-<stage>-<step>, or while it is
// written (temporary = 1) RUN/.tmp-ckpt-<stage>-<step>. The one place these names are made.
void sn_ckpt_dir(const char *run_dir, int stage, int64_t step, int temporary, char *out, size_t size);
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
// Newest complete checkpoint of run_dir (by stage, then step). A folder without its marker, or
// whose state file does not validate, is skipped with a warning. Returns 0 and fills path/stage/
// step, or -1 when there is none.
int sn_ckpt_find_latest(const char *run_dir, char *path, size_t size, int *stage, int64_t *step);
// Copies the tokenizer files of src_dir (tokenizer.json, tokenizer_config.json, vocab files,
// special_tokens_map.json) that exist into dst_dir. Returns 0, or -1 with err.
int sn_copy_tokenizer_files(const char *src_dir, const char *dst_dir, char *err, size_t errlen);
// rm -rf for a folder this program wrote (no symlinks followed).
int sn_remove_tree(const char *path);
