// Private to host/io/safetensors_*.c, not a public API (callers include safetensors.h): the
// messages, dtype names and format constants that the header parser, the reader and the writer share.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader copies it as host memory"
#endif

#define ST_LEN_PREFIX_BYTES 8                   // u64 little-endian header length
#define ST_IO_CHUNK_ELEMS (1u << 20)             // elements a read or write converts at a time
#define ST_MSG_NAME_MAX 160                      // longest tensor name quoted in a message
#define ST_METADATA_KEY "__metadata__"

// ---- messages (safetensors_header.c) ------------------------------------------------------------

// Formats a message into err (when given) and returns -1.
int sn_st_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF.
int sn_st_utf8_valid(const unsigned char *s, size_t n);
// A name made safe to quote in one message line: control bytes (and all high bytes of a name that
// is not UTF-8) become \xNN; long names are cut. buf should hold QUOTABLE_BUF bytes.
const char *sn_st_quotable(const char *name, char *buf, size_t bufsize);
#define QUOTABLE_BUF (ST_MSG_NAME_MAX + 16)

// ---- dtypes and the length prefix (safetensors_header.c) ----------------------------------------

const char *sn_st_dtype_name(sn_dtype d);  // "F32", "BF16", "F16"; NULL for others
// The 8-byte length prefix must be sane before anything allocates or reads that many bytes.
int sn_st_check_header_len(const char *path, uint64_t header_len, uint64_t file_size, char *err, size_t errlen);
