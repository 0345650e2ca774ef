// Shared by every host file: exit codes, error-check macros that print file:line and the failing
// call, checked allocation and file I/O, logging. Kernels have their own twin in kernels/common.cuh.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

// Exit status for bad input (a malformed file, an unknown key, ids outside the vocabulary):
// distinct from 1, which means an internal or system failure.
#define SN_EXIT_BAD_INPUT 2
#define SN_EXIT_FAILURE 1

// Prints "error: <file>:<line>: <message>" (the location of the check in our source) and exits.
_Noreturn void sn_die_at(const char *src_file, int src_line, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
// Bad user input: names the user's file/field in the message, exits with SN_EXIT_BAD_INPUT.
#define sn_bad_input(...) sn_die_at(__FILE__, __LINE__, SN_EXIT_BAD_INPUT, __VA_ARGS__)
// Internal failure (out of memory, a failed system call): exits with SN_EXIT_FAILURE.
#define sn_fatal(...) sn_die_at(__FILE__, __LINE__, SN_EXIT_FAILURE, __VA_ARGS__)

// ---- command lines (cli.c) ----------------------------------------------------------------------
// A usage error is the user's command line (an unknown flag, a missing or malformed value), not a
// place in our source: it prints "error: <message>" without [file:line], then the usage that
// sn_cli_init registered, on stderr, and exits SN_EXIT_BAD_INPUT. The sn_flag_* checks use it.
_Noreturn void sn_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Registers the program's name and usage printer (for --help, --version and usage errors).
void sn_cli_init(const char *prog, void (*usage)(FILE *out));
// --help / -h: the usage on stdout, exit 0. --version: "<prog> (scalingnote) <version>" on stdout,
// exit 0. Any other argument: returns. Call it on each flag before matching the program's own.
void sn_cli_std_flag(const char *arg);
// The project version (CMake's project(VERSION)).
const char *sn_version(void);
// Rewrites path in place as a user would type it: "a//b" -> "a/b", "./a/./b/" -> "a/b", "." for
// the current folder, "a/../b" -> "b" where a is a folder (it stays where a is a link, whose ".."
// is above its target, or does not exist). Returns path.
char *sn_path_normalize(char *path);

// Formats a message into err (errlen bytes) and returns -1: for functions that report errors
// instead of exiting.
int sn_errorf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

void sn_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));   // stderr, one line
void sn_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));  // stderr, "warning: "

// Checked allocation: never returns NULL.
void *sn_malloc_at(size_t bytes, const char *src_file, int src_line);
void *sn_calloc_at(size_t count, size_t size, const char *src_file, int src_line);
void *sn_realloc_at(void *p, size_t bytes, const char *src_file, int src_line);
char *sn_strdup_at(const char *s, const char *src_file, int src_line);
#define mallocCheck(bytes) sn_malloc_at((bytes), __FILE__, __LINE__)
#define callocCheck(count, size) sn_calloc_at((count), (size), __FILE__, __LINE__)
#define reallocCheck(p, bytes) sn_realloc_at((p), (bytes), __FILE__, __LINE__)
#define strdupCheck(s) sn_strdup_at((s), __FILE__, __LINE__)

// Checked stdio: failures name the path and the call.
FILE *sn_fopen_at(const char *path, const char *mode, const char *src_file, int src_line);
void sn_fread_at(void *dst, size_t size, size_t count, FILE *f, const char *path,
                 const char *src_file, int src_line);
void sn_fwrite_at(const void *src, size_t size, size_t count, FILE *f, const char *path,
                  const char *src_file, int src_line);
void sn_fclose_at(FILE *f, const char *path, const char *src_file, int src_line);
#define fopenCheck(path, mode) sn_fopen_at((path), (mode), __FILE__, __LINE__)
#define freadCheck(dst, size, count, f, path) sn_fread_at((dst), (size), (count), (f), (path), __FILE__, __LINE__)
#define fwriteCheck(src, size, count, f, path) sn_fwrite_at((src), (size), (count), (f), (path), __FILE__, __LINE__)
#define fcloseCheck(f, path) sn_fclose_at((f), (path), __FILE__, __LINE__)

// Reads a whole file into a NUL-terminated buffer. Returns NULL (errno set) when it cannot be read;
// *len_out gets the byte count without the NUL.
char *sn_read_file(const char *path, size_t *len_out);

// Durable write: writes to "<path>.tmp.<pid>", fsyncs it, renames it over path, fsyncs the folder.
// Returns 0 on success, -1 with errno set (the temp file is removed; an old `path` stays intact).
int sn_write_file_atomic(const char *path, const void *data, size_t len);
// fsync a directory (after renames into it). Returns 0 or -1 with errno set.
int sn_fsync_dir(const char *dir);
// mkdir -p. Returns 0 or -1 with errno set.
int sn_mkdir_p(const char *path);

// A growing NUL-terminated string.
typedef struct {
  char *s;
  size_t len, cap;
} sn_strbuf;
void sn_strbuf_append(sn_strbuf *b, const char *s, size_t n);
void sn_strbuf_printf(sn_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// 64-bit content hash (checksums, cache keys); chain calls through `seed`.
uint64_t sn_hash64(const void *data, size_t len, uint64_t seed);
// The same hash over data that arrives in pieces (a file written a chunk at a time): init, update
// with each piece in order, final; equal to sn_hash64 over the concatenation.
typedef struct {
  uint64_t lane[4], seed, total;
  unsigned char tail[32];  // bytes of an unfinished 32-byte stripe
  size_t ntail;
} sn_hasher;
void sn_hasher_init(sn_hasher *h, uint64_t seed);
void sn_hasher_update(sn_hasher *h, const void *data, size_t len);
uint64_t sn_hasher_final(const sn_hasher *h);

// True when path exists / is a folder.
int sn_exists(const char *path);
int sn_is_dir(const char *path);

// ---- sizes and numbers from the user -----------------------------------------------------------
// A count times a length sizes many buffers; with user-chosen values the product can overflow.
// sn_mul_size: a * b, or exits 2 naming `what` (e.g. "--batch x --max-doc-len") when it exceeds
// `limit` (SIZE_MAX for no limit beyond the type). sn_mul_size_ok: the same as a test, 0 or -1.
size_t sn_mul_size(size_t a, size_t b, size_t limit, const char *what);
int sn_mul_size_ok(size_t a, size_t b, size_t limit, size_t *out);

// Whole-string decimal numbers (flags, --set values): optional '-', digits, and for reals a
// fraction and exponent; no leading space, '+', hex, "inf"/"nan" or trailing characters.
// Return 0 and set *out, or -1 (not such a number, or outside [min, max]).
int sn_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);
int sn_parse_f64(const char *s, double min, double max, double *out);
// The same for a command-line flag: exits 2 naming the flag, the value and the range.
int64_t sn_flag_i64(const char *flag, const char *s, int64_t min, int64_t max);
double sn_flag_f64(const char *flag, const char *s, double min, double max);

// Physical memory of this host (sysconf), 0 when unknown: the hard cap of host buffers sized by
// the user (top-k lists).
size_t sn_host_memory_bytes(void);

// Kind checks of user paths: 0 when `path` is a `want` ("file" or "folder") or does not exist
// (the loader reports missing files in its own words), else -1 with "KEY: 'path' is a folder,
// expected a file" in err.
int sn_check_path_kind(const char *key, const char *path, int want_dir, char *err, size_t errlen);
// The same for a command-line flag (path may be NULL: not given): exits 2 with that message.
void sn_flag_path_kind(const char *flag, const char *path, int want_dir);

// Monotonic wall clock in seconds.
double sn_now_s(void);

#define SN_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SN_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SN_MAX(a, b) ((a) > (b) ? (a) : (b))
#define SN_CEIL_DIV(a, b) (((a) + (b) - 1) / (b))
#define SN_GIB (1024.0 * 1024.0 * 1024.0)  // bytes in a GiB, as a double for reporting
