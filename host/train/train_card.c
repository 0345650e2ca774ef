// RUN/final/<tower>/README.md: the model card of an exported tower. What a reader of the folder
// (or of a hub page it is uploaded to) needs to use it as trained: where it came from, the data,
// the steps and loss settings, the prompts, pooling and lengths, the evaluation when the run had
// one, and how to load it with sentence-transformers and with sn_embed.
#include <errno.h>
#include <string.h>

#include "cJSON.h"
#include "common.h"
#include "train_internal.h"

#define CARD_PATH_MAX (SN_TRAIN_PATH_MAX + 64)

// Config strings as one markdown line: a description given inline as JSON may hold newlines.
static void put_inline(sn_strbuf *b, const char *s) {
  sn_strbuf_printf(b, "`");
  for (; *s; s++) sn_strbuf_printf(b, "%c", (*s == '\n' || *s == '`') ? ' ' : *s);
  sn_strbuf_printf(b, "`");
}

// The last record of `stage` in RUN/metrics.jsonl: the steps trained and the final loss.
static int last_record(const sn_trainer *t, int stage, double *step, double *loss) {
  char path[CARD_PATH_MAX];
  snprintf(path, sizeof path, "%s/metrics.jsonl", t->run_dir);
  char *text = sn_read_file(path, NULL);
  if (!text) return 0;
  int found = 0;
  for (char *line = text, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next) *next++ = '\0';
    cJSON *rec = cJSON_Parse(line);
    if (rec && (int)cJSON_GetNumberValue(cJSON_GetObjectItem(rec, "stage")) == stage) {
      *step = cJSON_GetNumberValue(cJSON_GetObjectItem(rec, "step"));
      *loss = cJSON_GetNumberValue(cJSON_GetObjectItem(rec, "loss"));
      found = 1;
    }
    cJSON_Delete(rec);
  }
  free(text);
  return found;
}

// RUN/eval/<name>.json as a markdown table, when the run evaluated these towers.
static void put_eval(sn_strbuf *b, const sn_trainer *t, const char *name) {
  char path[CARD_PATH_MAX];
  snprintf(path, sizeof path, "%s/eval/%s.json", t->run_dir, name);
  char *text = sn_read_file(path, NULL);
  cJSON *j = text ? cJSON_Parse(text) : NULL;
  free(text);
  sn_strbuf_printf(b, "\n## Evaluation\n\n");
  if (!j) {
    sn_strbuf_printf(b, "Not evaluated by the training run (no `eval.data`). `sn_eval` evaluates it on a BEIR folder.\n");
    return;
  }
  static const char *const keys[] = {"ndcg@10", "recall@10", "recall@100", "mrr@10"};
  sn_strbuf_printf(b, "On ");
  put_inline(b, t->cfg.eval.data);
  sn_strbuf_printf(b, ", split `%s`, %.0f queries over %.0f documents (exact search; trec_eval's definitions):\n\n",
                   t->cfg.eval.split, cJSON_GetNumberValue(cJSON_GetObjectItem(j, "num_queries")),
                   cJSON_GetNumberValue(cJSON_GetObjectItem(j, "num_docs")));
  sn_strbuf_printf(b, "| nDCG@10 | Recall@10 | Recall@100 | MRR@10 |\n|---|---|---|---|\n|");
  for (size_t i = 0; i < SN_ARRAY_LEN(keys); i++)
    sn_strbuf_printf(b, " %.4f |", cJSON_GetNumberValue(cJSON_GetObjectItem(j, keys[i])));
  sn_strbuf_printf(b, "\n");
  if (!strcmp(name, "student"))
    sn_strbuf_printf(b, "\nQueries embedded by this student, documents by the stage-1 document tower.\n");
  cJSON_Delete(j);
}

static void put_training(sn_strbuf *b, const sn_trainer *t, int stage) {
  const sn_run_config *c = &t->cfg;
  sn_strbuf_printf(b, "\n## Training\n\n- Base model: ");
  if (stage == 1) {
    if (c->stage1.model[0]) put_inline(b, c->stage1.model);
    else {
      sn_strbuf_printf(b, "none, freshly initialised from the description ");
      put_inline(b, c->stage1.model_desc);
    }
    sn_strbuf_printf(b, "\n- Stage 1 of ScalingNote: dual towers (query and document) trained with InfoNCE%s\n",
                     c->stage1.lora.rank > 0 ? " as LoRA adapters, merged into these weights" : "");
  } else {
    if (c->stage2.student[0]) put_inline(b, c->stage2.student);
    else if (c->stage2.student_from_teacher > 0)
      sn_strbuf_printf(b, "the first %d blocks of the stage-1 query tower", c->stage2.student_from_teacher);
    else {
      sn_strbuf_printf(b, "none, freshly initialised from the description ");
      put_inline(b, c->stage2.student_desc);
    }
    sn_strbuf_printf(b, "\n- Stage 2 of ScalingNote: the student distilled from the frozen stage-1 query tower "
                        "(`../query_tower`); documents keep the stage-1 document tower (`../doc_tower`)\n");
  }
  sn_strbuf_printf(b, "- Data:");
  for (int i = 0; i < c->data.n_train; i++) {
    sn_strbuf_printf(b, " ");
    put_inline(b, c->data.train[i]);
  }
  double step = 0, loss = 0;
  if (last_record(t, stage, &step, &loss)) sn_strbuf_printf(b, "\n- Steps: %.0f (final loss %.4f)", step, loss);
  if (stage == 1) {
    const sn_cfg_stage1 *s = &c->stage1;
    sn_strbuf_printf(b, ", %d queries per batch, peak lr %g\n", s->batch_queries, s->optim.lr);
    sn_strbuf_printf(b, "- Loss: InfoNCE, temperature %g, %d hard negative(s) per query, in-batch%s negatives%s\n",
                     s->temperature, s->negatives_per_query, s->cross_device_negatives ? " and cross-device" : "",
                     s->symmetric ? ", plus the symmetric document-to-query term" : "");
  } else {
    const sn_cfg_stage2 *s = &c->stage2;
    sn_strbuf_printf(b, ", %d queries per batch, peak lr %g\n", s->batch_queries, s->optim.lr);
    sn_strbuf_printf(b, "- Loss: alpha * MSE + beta * (1 - cos) to the teacher's embeddings, alpha %g, beta %g", s->alpha,
                     s->beta);
    if (s->gamma > 0)
      sn_strbuf_printf(b, ", plus gamma * InfoNCE against the stage-1 documents, gamma %g, temperature %g, %d negative(s)",
                       s->gamma, s->temperature, s->negatives_per_query);
    sn_strbuf_printf(b, "\n");
  }
  sn_strbuf_printf(b, "- Trained with scalingnote %s; the run's whole configuration is in "
                      "`config.resolved.json` of its run folder\n",
                   sn_version());
}

int sn_train_write_card(const sn_trainer *t, int stage, const char *tower, char *err, size_t errlen) {
  const sn_run_config *c = &t->cfg;
  const int is_doc = !strcmp(tower, "doc_tower");
  const char *prompt = is_doc ? c->data.doc_prompt : c->data.query_prompt;
  const char *prompt_name = is_doc ? "document" : "query";
  const char *pooling = stage == 1 ? c->stage1.pooling : c->stage2.pooling;
  const int max_len = is_doc ? c->data.max_doc_len : c->data.max_query_len;
  sn_strbuf b = {0};
  sn_strbuf_printf(&b, "---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\n"
                       "tags:\n- sentence-transformers\n- feature-extraction\n- dense-retrieval\n- scalingnote\n---\n\n");
  sn_strbuf_printf(&b, "# %s (ScalingNote stage %d)\n\n", tower, stage);
  sn_strbuf_printf(&b, "The %s tower of a dense retriever: it embeds %s into L2-normalised vectors compared by "
                       "cosine similarity (dot product).\n",
                   is_doc ? "document" : stage == 2 ? "student query" : "query", is_doc ? "documents" : "queries");
  sn_strbuf_printf(&b, "\n- Prompt (`%s`): ", prompt_name);
  put_inline(&b, prompt);
  sn_strbuf_printf(&b, "\n- Pooling: %s, then L2 normalisation\n- Length: at most %d tokens, special tokens included\n",
                   !strcmp(pooling, "last") ? "the last token's hidden state"
                   : !strcmp(pooling, "cls") ? "the first (CLS) token's hidden state"
                                             : "the mean of the tokens' hidden states",
                   max_len);
  put_training(&b, t, stage);
  put_eval(&b, t, is_doc || stage == 1 ? "stage1" : "student");
  sn_strbuf_printf(&b,
                   "\n## Usage\n\nWith sentence-transformers (prompts, pooling and normalisation come with the folder):\n\n"
                   "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
                   "model = SentenceTransformer(\"path/to/%s\")\n"
                   "embeddings = model.encode([\"%s\"], prompt_name=\"%s\")\n```\n\n"
                   "With scalingnote's `sn_embed` (one JSON object per line: `{\"text\": ...}`%s):\n\n"
                   "```sh\nsn_embed --model path/to/%s --input %s.jsonl --out %s.npy --prompt $'",
                   tower, is_doc ? "Some document text." : "how do I resize a partition", prompt_name,
                   is_doc ? ", `\"title\"` optional" : "", tower, is_doc ? "docs" : "queries",
                   is_doc ? "docs" : "queries");
  // bash's $'...': \n is a newline, \\ and \' the characters themselves.
  for (const char *p = prompt; *p; p++) {
    if (*p == '\n') sn_strbuf_printf(&b, "\\n");
    else if (*p == '\\' || *p == '\'') sn_strbuf_printf(&b, "\\%c", *p);
    else sn_strbuf_printf(&b, "%c", *p);
  }
  sn_strbuf_printf(&b, "' --pooling %s --max-len %d\n```\n", pooling, max_len);
  char path[CARD_PATH_MAX];
  snprintf(path, sizeof path, "%s/final/%s/README.md", t->run_dir, tower);
  const int rc = sn_write_file_atomic(path, b.s, b.len);
  free(b.s);
  if (rc != 0) return sn_errorf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
  return 0;
}
