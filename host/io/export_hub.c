// Model folders are local: a missing one that looks like a Hugging Face Hub id gets told how to
// download it, rather than only that the path is missing.
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <string.h>

#include "common.h"
#include "export.h"

// Hub ids are "owner/name" of letters, digits, '-', '_' and '.'; config keys arrive resolved
// against the config file's folder, so the id is looked for in the last two path components.
static int hub_id_char(char c) { return isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.'; }

static int is_hub_part(const char *s, size_t len) {
  if (len == 0 || s[0] == '.') return 0;
  for (size_t i = 0; i < len; i++)
    if (!hub_id_char(s[i])) return 0;
  return 1;
}

// The trailing "owner/name" of path (a pointer into it), or NULL.
static const char *hub_id_tail(const char *path) {
  size_t len = strlen(path);
  while (len > 0 && path[len - 1] == '/') len--;
  const char *end = path + len, *slash = end;
  while (slash > path && slash[-1] != '/') slash--;
  if (slash == path || !is_hub_part(slash, (size_t)(end - slash))) return NULL;
  const char *owner = slash - 1;
  while (owner > path && owner[-1] != '/') owner--;
  return is_hub_part(owner, (size_t)(slash - 1 - owner)) ? owner : NULL;
}

void sn_export_check_model_folder(const char *dir, const char *what) {
  errno = 0;  // stat sets it when the path is missing; a plain file leaves it 0
  if (sn_is_dir(dir)) return;
  const char *reason = errno ? strerror(errno) : "not a folder";
  const char *id = errno == ENOENT ? hub_id_tail(dir) : NULL;
  if (!id) sn_bad_input("%s: model folder '%s' is missing or unreadable (%s)", what, dir, reason);
  sn_bad_input("%s: model folder '%s' is missing (%s): models are read from local folders, not from the "
               "Hugging Face Hub; if '%s' is a Hub id, download it first with "
               "`huggingface-cli download %s --local-dir DIR` and give DIR",
               what, dir, reason, id, id);
}
