// The run config: defaults (from the schema rows), nested keys, --set overrides, and every kind of
// bad input naming the key (with the nearest valid key suggested).
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "run_config.h"
#include "test_util.h"

static int parse(sn_run_config *c, const char *json, const char *const *sets, int nsets, char *err) {
  return sn_run_config_parse(c, json, "cfg.json", sets, nsets, err, 1024);
}

static void expect_error(const char *json, const char *const *sets, int nsets, const char *needle1,
                         const char *needle2) {
  sn_run_config c;
  char err[1024] = "";
  int rc = parse(&c, json, sets, nsets, err);
  CHECK(rc == -1, "expected an error for %s", json);
  CHECK(strstr(err, needle1) != NULL, "error '%s' lacks '%s'", err, needle1);
  if (needle2) CHECK(strstr(err, needle2) != NULL, "error '%s' lacks '%s'", err, needle2);
}

int main(void) {
  sn_run_config c;
  char err[1024];

  // Defaults and a nested file.
  CHECK(parse(&c, "{}", NULL, 0, err) == 0, "empty config: %s", err);
  CHECK(c.stage1.temperature == 0.05f && c.stage2.alpha == 1 && c.stage2.beta == 1 && c.stage2.gamma == 0,
        "defaults");
  // Defaults come from the schema rows: per-stage lr through OPTIM_FIELDS, floats equal to their
  // float literals, strings (with the escape) and bools, and no training files.
  sn_run_config d;
  sn_run_config_defaults(&d);
  CHECK(d.stage1.optim.lr == 1e-5f && d.stage2.optim.lr == 1e-4f, "stage lr defaults %g %g",
        d.stage1.optim.lr, d.stage2.optim.lr);
  CHECK(d.stage2.optim.eps == 1e-8f && d.stage1.optim.beta2 == 0.999f && d.dist.bucket_mb == 25.0f,
        "float defaults");
  CHECK(strcmp(d.data.doc_prompt, "Title: {title}\nText: {text}") == 0, "doc_prompt default '%s'",
        d.data.doc_prompt);
  CHECK(strcmp(d.stage2.optim.schedule, "cosine") == 0 && strcmp(d.stage2.pooling, "cls") == 0 &&
            strcmp(d.run_dir, "runs/default") == 0 && d.stage1.model[0] == '\0',
        "string defaults");
  CHECK(d.seed == 1234 && d.data.max_line_bytes == (1 << 20) && d.dist.overlap == 1 &&
            d.dist.zero1 == 0 && d.dist.zero == 0 && d.data.n_train == 0 && d.comm_timeout_s == 600,
        "int, bool and path-list defaults");
  const char *json =
      "{\"run_dir\": \"out\", \"device\": \"cpu\", \"seed\": 7, \"_comment\": \"ignored\",\n"
      " \"data\": {\"train\": [\"a.jsonl\", \"/abs/b.jsonl\"], \"max_doc_len\": 64},\n"
      " \"stage1\": {\"temperature\": 0.02, \"optim\": {\"lr\": 3e-4, \"schedule\": \"linear\"},\n"
      "            \"model_desc\": {\"arch\": \"qwen2\", \"layers\": 2}},\n"
      " \"stage2\": {\"alpha\": 0.5}}";
  CHECK(sn_run_config_parse(&c, json, "configs/x.json", NULL, 0, err, sizeof err) == 0, "%s", err);
  CHECK(strcmp(c.run_dir, "configs/out") == 0, "relative run_dir resolved against the file: %s", c.run_dir);
  CHECK(c.data.n_train == 2 && strcmp(c.data.train[0], "configs/a.jsonl") == 0 &&
            strcmp(c.data.train[1], "/abs/b.jsonl") == 0, "train paths");
  CHECK(c.seed == 7 && c.data.max_doc_len == 64 && c.stage1.temperature == 0.02f, "values");
  CHECK(c.stage1.optim.lr == 3e-4f && strcmp(c.stage1.optim.schedule, "linear") == 0, "optim");
  CHECK(c.stage1.model_desc[0] == '{' && strstr(c.stage1.model_desc, "qwen2"), "inline desc %s", c.stage1.model_desc);
  CHECK(c.stage2.alpha == 0.5f, "stage2.alpha");

  // --set overrides, JSON values and plain strings.
  const char *sets[] = {"stage1.temperature=0.1", "device=cuda", "stage1.symmetric=true",
                        "data.train=[\"x.jsonl\"]", "run_dir=runs/r"};
  CHECK(parse(&c, json, sets, 5, err) == 0, "%s", err);
  CHECK(c.stage1.temperature == 0.1f && strcmp(c.device, "cuda") == 0 && c.stage1.symmetric == 1,
        "overrides applied");
  CHECK(c.data.n_train == 1 && strcmp(c.data.train[0], "x.jsonl") == 0, "list override (cwd-relative)");
  CHECK(strcmp(c.run_dir, "runs/r") == 0, "string override");

  // Resolved dump parses back to the same config; the hash ignores checkpoint/log settings.
  char *dump = sn_run_config_to_json(&c);
  sn_run_config back;
  CHECK(sn_run_config_parse(&back, dump, NULL, NULL, 0, err, sizeof err) == 0, "dump reparses: %s", err);
  CHECK(sn_run_config_hash(&back) == sn_run_config_hash(&c), "hash of the dump equals");
  back.checkpoint.every = 123;
  CHECK(sn_run_config_hash(&back) == sn_run_config_hash(&c), "checkpoint.every is not hashed");
  back.stage1.temperature = 0.3f;
  CHECK(sn_run_config_hash(&back) != sn_run_config_hash(&c), "temperature is hashed");
  free(dump);

  // Bad input, each naming the key.
  expect_error("{\"stage1\": {\"temprature\": 0.1}}", NULL, 0, "stage1.temprature", "stage1.temperature");
  expect_error("{\"sed\": 1}", NULL, 0, "'sed'", "'seed'");
  expect_error("{\"stage1\": {\"temperature\": \"hot\"}}", NULL, 0, "stage1.temperature", "number");
  expect_error("{\"stage1\": {\"temperature\": 0}}", NULL, 0, "stage1.temperature", "[0.0001");
  expect_error("{\"stage1\": {\"batch_queries\": 2.5}}", NULL, 0, "stage1.batch_queries", "integer");
  expect_error("{\"device\": \"tpu\"}", NULL, 0, "device", "cpu|cuda");
  expect_error("{\"stage1\": 3}", NULL, 0, "'stage1' must be an object", NULL);
  expect_error("{\"data\": {\"train\": [1]}}", NULL, 0, "data.train", "string");
  expect_error("{\"stage1\": {\"symmetric\": 1}}", NULL, 0, "stage1.symmetric", "true or false");
  expect_error("{\"seed\": 1,\n \"device\": }", NULL, 0, "cfg.json: line 2", "JSON");
  expect_error("[1, 2]", NULL, 0, "object", NULL);
  expect_error("{\"stage2\": {\"alpha\": 0, \"beta\": 0}}", NULL, 0, "nothing to learn", NULL);
  expect_error("{\"data\": {\"query_prompt\": \"no placeholder\"}}", NULL, 0, "data.query_prompt", "{text}");
  expect_error("{\"stage1\": {\"model\": \"m\", \"model_desc\": \"d.json\"}}", NULL, 0, "exclusive", NULL);
  // dist.zero1 is an alias of dist.zero = 1: both spellings resolve (and hash) alike.
  sn_run_config z1, z;
  CHECK(parse(&z1, "{\"dist\": {\"zero1\": true}}", NULL, 0, err) == 0, "%s", err);
  CHECK(parse(&z, "{\"dist\": {\"zero\": 1}}", NULL, 0, err) == 0, "%s", err);
  CHECK(z1.dist.zero == 1 && z.dist.zero1 == 1 && sn_run_config_hash(&z1) == sn_run_config_hash(&z),
        "dist.zero1 = true resolves to dist.zero = 1 (zero %d, zero1 %d)", z1.dist.zero, z.dist.zero1);
  CHECK(parse(&z, "{\"dist\": {\"zero\": 2}}", NULL, 0, err) == 0 && z.dist.zero == 2 && !z.dist.zero1,
        "dist.zero = 2: %s", err);
  expect_error("{\"dist\": {\"zero1\": true, \"zero\": 2}}", NULL, 0, "'dist.zero1' is true but 'dist.zero' is 2",
               NULL);
  expect_error("{\"dist\": {\"zero\": 3}}", NULL, 0, "dist.zero", "[0, 2]");
  const char *bad_set[] = {"stage1.temprature=0.1"};
  expect_error("{}", bad_set, 1, "--set", "stage1.temperature");
  const char *no_eq[] = {"stage1.temperature"};
  expect_error("{}", no_eq, 1, "--set", "key=value");
  const char *section[] = {"stage1=1"};
  expect_error("{}", section, 1, "section", NULL);

  // A missing file names it.
  CHECK(sn_run_config_load(&c, "/nonexistent/cfg.json", NULL, 0, err, sizeof err) == -1 &&
            strstr(err, "/nonexistent/cfg.json"), "missing file: %s", err);
  // stage1.lora: targets as a list or a comma string (short or peft names), parsed to a mask; bad
  // names, non-string entries and lora with shared_towers are errors naming the key.
  CHECK(parse(&c, "{\"stage1\": {\"lora\": {\"rank\": 8, \"targets\": [\"q\", \"v_proj\", \"down\"]}}}", NULL, 0,
              err) == 0, "lora list: %s", err);
  sn_lora_config lc = sn_run_config_lora(&c);
  CHECK(lc.rank == 8 && lc.alpha == 16.0f &&
            lc.targets == ((1u << SN_LORA_Q) | (1u << SN_LORA_V) | (1u << SN_LORA_DOWN)),
        "lora list parsed: rank %d alpha %g targets %#x (%s)", lc.rank, lc.alpha, lc.targets, c.stage1.lora.targets);
  const char *lora_sets[] = {"stage1.lora.rank=4", "stage1.lora.targets=gate, up"};
  CHECK(parse(&c, "{}", lora_sets, 2, err) == 0, "lora comma string: %s", err);
  lc = sn_run_config_lora(&c);
  CHECK(lc.targets == ((1u << SN_LORA_GATE) | (1u << SN_LORA_UP)), "lora comma string parsed: %#x", lc.targets);
  CHECK(parse(&c, "{}", NULL, 0, err) == 0 && strcmp(c.stage1.lora.targets, SN_LORA_ALL_TARGETS) == 0 &&
            c.stage1.lora.rank == 0, "lora defaults: off, every target");
  expect_error("{\"stage1\": {\"lora\": {\"rank\": 4, \"targets\": \"q,qq\"}}}", NULL, 0, "stage1.lora.targets",
               "unknown LoRA target 'qq'");
  expect_error("{\"stage1\": {\"lora\": {\"rank\": 4, \"targets\": [\"q\", 3]}}}", NULL, 0, "stage1.lora.targets",
               "must be a string");
  expect_error("{\"stage1\": {\"shared_towers\": true, \"lora\": {\"rank\": 4}}}", NULL, 0, "stage1.lora.shared",
               NULL);
  expect_error("{\"stage1\": {\"lora\": {\"rnak\": 4}}}", NULL, 0, "stage1.lora.rank", NULL);

  // Strict parsing (issue 16): a --set value is a number only when all of it is one; text after the
  // object, \u0000 in any string and paths too long for their key are errors naming the key.
  const char *bad_numbers[] = {"stage1.steps=3abc", "stage1.steps=0x10", "stage1.steps=2 7", "stage1.steps=",
                               "stage1.optim.lr=0.5xyz", "stage1.steps=1.5", "stage1.steps=1e400"};
  for (size_t i = 0; i < sizeof bad_numbers / sizeof *bad_numbers; i++)
    expect_error("{}", &bad_numbers[i], 1, bad_numbers[i][7] == 'o' ? "'stage1.optim.lr'" : "'stage1.steps'", "must");
  const char *good_number[] = {"stage1.steps=12"};
  CHECK(parse(&c, "{}", good_number, 1, err) == 0 && c.stage1.steps == 12, "--set stage1.steps=12: %s", err);
  expect_error("{\"seed\": 1} {\"seed\": 2}", NULL, 0, "cfg.json: line 1: text after the JSON object", NULL);
  expect_error("{\"seed\": 1}\n]", NULL, 0, "line 2", "text after");
  expect_error("{\"eval\": {\"split\": \"te\\u0000st\"}}", NULL, 0, "'eval.split'", "\\u0000");
  expect_error("{\"run_dir\\u0000x\": 1}", NULL, 0, "(a key)", "\\u0000");
  const char *nul_set[] = {"stage1.lora.targets=[\"q\\u0000\"]"};
  expect_error("{}", nul_set, 1, "'stage1.lora.targets'", "\\u0000");
  CHECK(parse(&c, "{\"eval\": {\"split\": \"a\\\\u0000\"}}", NULL, 0, err) == 0 &&
            strcmp(c.eval.split, "a\\u0000") == 0, "an escaped backslash before u0000 is no NUL: %s", err);
  char long_path[SN_CFG_PATH_MAX + 16], long_json[SN_CFG_PATH_MAX + 64];
  memset(long_path, 'x', sizeof long_path - 1);
  long_path[sizeof long_path - 1] = '\0';
  snprintf(long_json, sizeof long_json, "{\"data\": {\"train\": [\"a\", \"%s\"]}}", long_path);
  expect_error(long_json, NULL, 0, "'data.train' is too long", NULL);
  long_path[SN_CFG_PATH_MAX - 3] = '\0';  // 1021 bytes: fits alone, but not below the config file's folder "dir/"
  snprintf(long_json, sizeof long_json, "{\"eval\": {\"data\": \"%s\"}}", long_path);
  CHECK(sn_run_config_parse(&c, long_json, "dir/cfg.json", NULL, 0, err, sizeof err) == -1 &&
            strstr(err, "'eval.data' is too long"), "relative path cut below its folder: %s", err);
  // Kinds: an existing path must be what its key takes; a missing one is the loader's to report.
  expect_error("{\"data\": {\"train\": \"/\"}}", NULL, 0, "data.train: '/' is a folder, expected a file", NULL);
  expect_error("{\"eval\": {\"data\": \"/dev/null\"}}", NULL, 0, "eval.data: '/dev/null' is not a folder", NULL);
  CHECK(parse(&c, "{\"data\": {\"train\": \"/nonexistent.jsonl\"}}", NULL, 0, err) == 0, "missing path: %s", err);
  // Sizes: sequences x length of one batch within an int.
  const char *huge_eval[] = {"eval.batch=4100", "data.max_doc_len=1047553"};
  expect_error("{}", huge_eval, 2, "'eval.batch' x 'data.max_doc_len'", "2147483647");
  const char *huge_stage2[] = {"stage2.batch_queries=1000000", "stage2.negatives_per_query=1000"};
  expect_error("{}", huge_stage2, 2, "'stage2.batch_queries' x ('stage2.negatives_per_query' + 1)", NULL);

  // The shared number parsers: whole decimal strings only.
  int64_t i64;
  double f64;
  CHECK(sn_parse_i64("42", 0, 100, &i64) == 0 && i64 == 42, "42");
  CHECK(sn_parse_i64("-7", -10, 10, &i64) == 0 && i64 == -7, "-7");
  const char *bad_ints[] = {"", "3abc", "0x10", "2 7", " 5", "5 ", "+5", "1e3", "1.0", "-", "99999999999999999999"};
  for (size_t i = 0; i < sizeof bad_ints / sizeof *bad_ints; i++)
    CHECK(sn_parse_i64(bad_ints[i], INT64_MIN, INT64_MAX, &i64) == -1, "'%s' taken as an integer", bad_ints[i]);
  CHECK(sn_parse_i64("101", 0, 100, &i64) == -1, "101 outside [0, 100]");
  CHECK(sn_parse_f64("0.5", 0, 1, &f64) == 0 && f64 == 0.5, "0.5");
  CHECK(sn_parse_f64("1e-3", 0, 1, &f64) == 0 && f64 == 1e-3, "1e-3");
  CHECK(sn_parse_f64(".25", 0, 1, &f64) == 0 && f64 == 0.25, ".25");
  CHECK(sn_parse_f64("2.", 0, 3, &f64) == 0 && f64 == 2, "2.");
  const char *bad_reals[] = {"", "0.5xyz", "0x1p3", "inf", "nan", "1e", "1e+", ".", "-.", " 1", "1e400", "+1"};
  for (size_t i = 0; i < sizeof bad_reals / sizeof *bad_reals; i++)
    CHECK(sn_parse_f64(bad_reals[i], -1e300, 1e300, &f64) == -1, "'%s' taken as a number", bad_reals[i]);
  size_t product;
  CHECK(sn_mul_size_ok(4100, 1047553, (size_t)INT32_MAX, &product) == -1, "4100 x 1047553 within an int");
  CHECK(sn_mul_size_ok(SIZE_MAX / 2, 3, SIZE_MAX, &product) == -1, "size_t overflow not caught");
  CHECK(sn_mul_size_ok(5, 7, 35, &product) == 0 && product == 35, "5 x 7");

  return sn_test_finish("test_run_config");
}
