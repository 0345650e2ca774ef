// Prompt templates ("{text}", "{title}") and truncation that keeps the template's tail and EOS.
#define _GNU_SOURCE
#include "data.h"

#include <string.h>

#include "common.h"

#define PLACEHOLDER_TEXT "{text}"
#define PLACEHOLDER_TITLE "{title}"
#define DEFAULT_TEMPLATE PLACEHOLDER_TEXT
// Encoded with and without special tokens to learn which specials the tokenizer puts around text.
#define SPECIALS_PROBE_TEXT "a"

// One way of rendering: the template around "{text}", with "{title}" still in it.
typedef struct {
  char *prefix;
  char *suffix;
} split_template;

struct sn_prompt {
  sn_prompt_spec spec;
  sn_text_encoder enc;
  split_template titled;    // used when the title is non-empty
  split_template untitled;  // the template with its title-only lines left out
  int32_t *lead, *trail;    // specials the tokenizer puts before/after the text
  int n_lead, n_trail;
  int eos_extra;            // 1 when EOS is appended after the trailing specials
};

static size_t count_occurrences(const char *s, const char *needle) {
  size_t n = 0, len = strlen(needle);
  for (const char *p = strstr(s, needle); p; p = strstr(p + len, needle)) n++;
  return n;
}

// The template without the lines that hold "{title}" but not "{text}" (the newline that joined a
// removed line to the rest goes with it). Other "{title}"s stay and will render as "".
static char *drop_title_only_lines(const char *tpl) {
  size_t len = strlen(tpl);
  char *out = mallocCheck(len + 1);
  size_t n = 0;
  int kept_any = 0;  // kept lines are joined with '\n'
  for (const char *line = tpl;;) {
    const char *nl = strchr(line, '\n');
    size_t line_len = nl ? (size_t)(nl - line) : strlen(line);
    char *one = strndup(line, line_len);
    if (!one) sn_fatal("strndup: out of memory");
    int title_only = strstr(one, PLACEHOLDER_TITLE) && !strstr(one, PLACEHOLDER_TEXT);
    free(one);
    if (!title_only) {
      if (kept_any) out[n++] = '\n';
      memcpy(out + n, line, line_len);
      n += line_len;
      kept_any = 1;
    }
    if (!nl) break;
    line = nl + 1;
  }
  out[n] = '\0';
  return out;
}

static split_template split_at_text(const char *tpl) {
  const char *at = strstr(tpl, PLACEHOLDER_TEXT);
  split_template s;
  s.prefix = strndup(tpl, (size_t)(at - tpl));
  s.suffix = strdup(at + strlen(PLACEHOLDER_TEXT));
  if (!s.prefix || !s.suffix) sn_fatal("strdup: out of memory");
  return s;
}

// tpl with every "{title}" replaced by title (caller frees).
static char *substitute_title(const char *tpl, const char *title) {
  size_t n_title = count_occurrences(tpl, PLACEHOLDER_TITLE);
  size_t title_len = strlen(title), ph_len = strlen(PLACEHOLDER_TITLE);
  char *out = mallocCheck(strlen(tpl) + sn_mul_size(n_title, title_len, SIZE_MAX / 2, "a prompt's {title} copies") + 1);
  char *o = out;
  for (const char *p = tpl;;) {
    const char *hit = strstr(p, PLACEHOLDER_TITLE);
    size_t chunk = hit ? (size_t)(hit - p) : strlen(p);
    memcpy(o, p, chunk);
    o += chunk;
    if (!hit) break;
    memcpy(o, title, title_len);
    o += title_len;
    p = hit + ph_len;
  }
  *o = '\0';
  return out;
}

static char *concat3(const char *a, const char *b, const char *c) {
  size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
  char *out = mallocCheck(la + lb + lc + 1);
  memcpy(out, a, la);
  memcpy(out + la, b, lb);
  memcpy(out + la + lb, c, lc + 1);
  return out;
}

// Finds the tokenizer's specials around text: encode(probe, specials) = lead + encode(probe) + trail.
static int learn_specials(sn_prompt *p, char *err, size_t errlen) {
  int32_t *with = NULL, *plain = NULL;
  size_t n_with = 0, cap_with = 0, n_plain = 0, cap_plain = 0;
  const char *probe = SPECIALS_PROBE_TEXT;
  p->enc.encode(p->enc.ctx, probe, strlen(probe), 1, &with, &n_with, &cap_with);
  p->enc.encode(p->enc.ctx, probe, strlen(probe), 0, &plain, &n_plain, &cap_plain);
  int found = -1;
  for (size_t j = 0; n_plain <= n_with && j + n_plain <= n_with && found < 0; j++)
    if (memcmp(with + j, plain, n_plain * sizeof *plain) == 0) found = (int)j;
  int rc = -1;
  if (found < 0) {
    sn_data_errorf(err, errlen, "cannot tell the tokenizer's special tokens apart from the text "
                         "(encoding with add_special does not contain the plain encoding)");
  } else {
    p->n_lead = found;
    p->n_trail = (int)(n_with - n_plain) - found;
    p->lead = mallocCheck((size_t)(p->n_lead + 1) * sizeof(int32_t));
    p->trail = mallocCheck((size_t)(p->n_trail + 1) * sizeof(int32_t));
    memcpy(p->lead, with, (size_t)p->n_lead * sizeof(int32_t));
    memcpy(p->trail, with + found + n_plain, (size_t)p->n_trail * sizeof(int32_t));
    rc = 0;
  }
  free(with);
  free(plain);
  return rc;
}

sn_prompt *sn_prompt_create(const sn_prompt_spec *spec, const sn_text_encoder *enc, char *err,
                            size_t errlen) {
  const char *tpl = (spec->template_str && spec->template_str[0]) ? spec->template_str
                                                                  : DEFAULT_TEMPLATE;
  size_t n_text = count_occurrences(tpl, PLACEHOLDER_TEXT);
  if (n_text != 1) {
    sn_data_errorf(err, errlen,
                   "prompt template \"%s\" has %zu \"{text}\" placeholders (expected exactly one)",
                   tpl, n_text);
    return NULL;
  }
  if (spec->append_eos && enc->eos_id < 0) {
    sn_data_errorf(err, errlen, "append_eos is set but the tokenizer has no EOS token");
    return NULL;
  }
  sn_prompt *p = callocCheck(1, sizeof *p);
  p->spec = *spec;
  p->enc = *enc;
  p->spec.template_str = NULL;  // not kept: the split copies below are what is used
  if (spec->add_special && learn_specials(p, err, errlen) != 0) {
    free(p);
    return NULL;
  }
  p->eos_extra = spec->append_eos && !(p->n_trail > 0 && p->trail[p->n_trail - 1] == enc->eos_id);
  int fixed = p->n_lead + p->n_trail + p->eos_extra;
  if (spec->max_len < fixed + 1) {
    sn_data_errorf(err, errlen, "max length %d cannot hold the %d special/EOS tokens and any text",
            spec->max_len, fixed);
    free(p->lead);
    free(p->trail);
    free(p);
    return NULL;
  }
  p->titled = split_at_text(tpl);
  char *untitled = drop_title_only_lines(tpl);
  p->untitled = split_at_text(untitled);
  free(untitled);
  return p;
}

void sn_prompt_free(sn_prompt *p) {
  if (!p) return;
  free(p->titled.prefix);
  free(p->titled.suffix);
  free(p->untitled.prefix);
  free(p->untitled.suffix);
  free(p->lead);
  free(p->trail);
  free(p);
}

static const split_template *pick_template(const sn_prompt *p, const char *title) {
  return (title && title[0]) ? &p->titled : &p->untitled;
}

char *sn_prompt_render(const sn_prompt *p, const char *title, const char *text) {
  if (!title) title = "";
  const split_template *t = pick_template(p, title);
  char *prefix = substitute_title(t->prefix, title);
  char *suffix = substitute_title(t->suffix, title);
  char *out = concat3(prefix, text, suffix);
  free(prefix);
  free(suffix);
  return out;
}

static void append_ids(int32_t **ids, size_t *n, size_t *cap, const int32_t *src, size_t count) {
  if (count == 0) return;  // src may be NULL then
  if (*n + count > *cap) {
    *cap = SN_MAX(*n + count, 2 * *cap);
    *ids = reallocCheck(*ids, *cap * sizeof **ids);
  }
  memcpy(*ids + *n, src, count * sizeof *src);
  *n += count;
}

size_t sn_prompt_encode(const sn_prompt *p, const char *title, const char *text, int32_t **ids,
                        size_t *n, size_t *cap, int *truncated) {
  if (!title) title = "";
  const split_template *t = pick_template(p, title);
  char *prefix = substitute_title(t->prefix, title);
  char *suffix = substitute_title(t->suffix, title);
  const size_t max_len = (size_t)p->spec.max_len;
  const size_t fixed = (size_t)(p->n_lead + p->n_trail + p->eos_extra);
  const size_t room = max_len - fixed;  // for prompt tokens; ≥ 1 (checked at create)

  *n = 0;
  append_ids(ids, n, cap, p->lead, (size_t)p->n_lead);
  char *full = concat3(prefix, text, suffix);
  size_t n_body = p->enc.encode(p->enc.ctx, full, strlen(full), 0, ids, n, cap);
  free(full);
  *truncated = n_body > room;
  if (*truncated && suffix[0] == '\0') {
    *n = (size_t)p->n_lead + room;  // nothing after "{text}": the full encoding is prefix+text
  } else if (*truncated) {
    // Cut the text, not the tail: encode the suffix alone, then prefix+text cut to what is left.
    int32_t *tail = NULL;
    size_t n_tail = 0, cap_tail = 0;
    p->enc.encode(p->enc.ctx, suffix, strlen(suffix), 0, &tail, &n_tail, &cap_tail);
    *n = (size_t)p->n_lead;
    size_t keep_tail = SN_MIN(n_tail, room);  // a suffix longer than the room keeps its end
    size_t keep_head = room - keep_tail;
    if (keep_head > 0) {
      char *head = concat3(prefix, text, "");
      p->enc.encode(p->enc.ctx, head, strlen(head), 0, ids, n, cap);
      free(head);
      *n = SN_MIN(*n, (size_t)p->n_lead + keep_head);
    }
    if (keep_tail > 0) append_ids(ids, n, cap, tail + (n_tail - keep_tail), keep_tail);
    free(tail);
  }
  append_ids(ids, n, cap, p->trail, (size_t)p->n_trail);
  if (p->eos_extra) append_ids(ids, n, cap, &p->enc.eos_id, 1);
  // Packed batches and last-token pooling need at least one token per sequence.
  if (*n == 0 && p->enc.eos_id >= 0) append_ids(ids, n, cap, &p->enc.eos_id, 1);
  free(prefix);
  free(suffix);
  return *n;
}
