// Pseudo-queries for stage 2: titles and first sentences of the training documents, in a seeded
// order (data.h: Pseudo-queries).
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "data.h"

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }
static int ends_sentence(char ch) { return ch == '.' || ch == '!' || ch == '?'; }

size_t sn_short_text(const char *text, int max_words, char *out) {
  size_t len = 0;
  const char *p = text;
  for (int words = 0; words < max_words; words++) {
    while (*p == ' ' || *p == '\t' || *p == '\r') p++;
    if (*p == '\0' || *p == '\n') break;  // the first line is the first sentence at most
    const char *word = p;
    while (*p && !is_space(*p)) p++;
    if (len) out[len++] = ' ';
    memcpy(out + len, word, (size_t)(p - word));
    len += (size_t)(p - word);
    if (ends_sentence(p[-1])) break;
  }
  out[len] = '\0';
  return len;
}

typedef struct {
  uint64_t key;  // the seeded hash that orders the candidates
  int64_t doc;
  int is_title;
} candidate;

static int by_key(const void *a, const void *b) {
  const candidate *x = a, *y = b;
  if (x->key != y->key) return x->key < y->key ? -1 : 1;
  return x->doc != y->doc ? (x->doc < y->doc ? -1 : 1) : x->is_title - y->is_title;
}

void sn_pseudo_queries_build(sn_pseudo_queries *pq, const sn_train_examples *ex, unsigned sources,
                             int max_words, int64_t max, uint64_t seed) {
  memset(pq, 0, sizeof *pq);
  candidate *cands = mallocCheck((size_t)SN_MAX(2 * ex->n_docs, 1) * sizeof *cands);
  int64_t n = 0;
  for (int64_t d = 0; d < ex->n_docs; d++)
    for (int is_title = 1; is_title >= 0; is_title--) {
      if (!(sources & (is_title ? SN_PSEUDO_TITLES : SN_PSEUDO_SHORT_TEXTS))) continue;
      if (is_title && !ex->docs[d].title[0]) continue;
      uint64_t number = (uint64_t)(2 * d + is_title);
      cands[n++] = (candidate){sn_hash64(&number, sizeof number, seed), d, is_title};
    }
  qsort(cands, (size_t)n, sizeof *cands, by_key);

  // The short texts, NUL-separated in one buffer sized for the longest possible (never moved).
  size_t text_bytes = 0;
  for (int64_t i = 0; i < n; i++)
    if (!cands[i].is_title) text_bytes += strlen(ex->docs[cands[i].doc].text) + 1;
  pq->text = mallocCheck(SN_MAX(text_bytes, 1));
  pq->items = mallocCheck((size_t)SN_MAX(n, 1) * sizeof *pq->items);
  size_t used = 0;
  int64_t kept = 0;
  for (int64_t i = 0; i < n && (max == 0 || kept < max); i++) {
    const sn_doc *doc = &ex->docs[cands[i].doc];
    const char *text = doc->title;
    if (!cands[i].is_title) {
      size_t len = sn_short_text(doc->text, max_words, pq->text + used);
      if (len == 0) continue;
      text = pq->text + used;
      used += len + 1;
    }
    pq->items[kept++] = (sn_text_item){.title = "", .text = text, .template_str = NULL};
  }
  pq->n = kept;
  free(cands);
}

void sn_pseudo_queries_free(sn_pseudo_queries *pq) {
  free(pq->items);
  free(pq->text);
  memset(pq, 0, sizeof *pq);
}
