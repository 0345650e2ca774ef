// BM25 evaluation: index the BEIR corpus, search the judged queries, score with the dense path's
// metrics code (sn_eval_score_topk), so both report the same keys and the same coverage.
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "eval.h"

int sn_eval_bm25_run(const sn_eval_opts *o, const sn_bm25_opts *bm25, const sn_beir *data, sn_eval_result *out,
                     char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  const double t0 = sn_now_s();
  const int N = data->corpus.n, Q = data->queries.n;
  const int k = SN_MIN(SN_MAX(o->k, SN_EVAL_MAX_METRIC_K), N);
  if (sn_eval_check_topk_sizes(o, Q, k, err, errlen) != 0) return -1;
  const int all_cores = 0;
  sn_bm25_index *index = sn_bm25_build((const char *const *)data->corpus.titles,
                                       (const char *const *)data->corpus.texts, N, bm25, all_cores, err, errlen);
  if (!index) return -1;
  out->seconds_embed_docs = sn_now_s() - t0;
  if (o->verbose)
    sn_log("bm25: indexed %d documents in %.2f s (%lld distinct terms, %.1f terms per document; k1 %g, b %g, "
           "lowercase %s, stop words %s, stemming %s)", N, out->seconds_embed_docs,
           (long long)sn_bm25_num_terms(index), (double)sn_bm25_num_tokens(index) / N, bm25->k1, bm25->b,
           bm25->lowercase ? "on" : "off", bm25->stopwords ? "removed" : "kept", bm25->stem ? "Porter" : "off");

  const double t1 = sn_now_s();
  int32_t *idx = mallocCheck((size_t)Q * k * sizeof *idx);
  float *scores = mallocCheck((size_t)Q * k * sizeof *scores);
  sn_bm25_search(index, (const char *const *)data->queries.texts, Q, k, (const char *const *)data->corpus.ids,
                 all_cores, idx, scores);
  out->seconds_search = sn_now_s() - t1;
  if (o->verbose) sn_log("bm25: searched %d queries in %.3f s", Q, out->seconds_search);
  sn_bm25_free(index);

  const int rc = sn_eval_score_topk(o, data, idx, scores, k, out, err, errlen);
  out->seconds = sn_now_s() - t0;
  free(idx);
  free(scores);
  return rc;
}
