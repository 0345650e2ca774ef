// Shared by the export_*.c files: file names, our own keys, JSON writing.
#pragma once
#include <cJSON.h>
#include <stddef.h>

#include "export.h"

#define SN_EXPORT_PATH_LEN 4096
#define SN_EXPORT_MODULES "modules.json"
#define SN_EXPORT_ST_CONFIG "config_sentence_transformers.json"
#define SN_EXPORT_BERT_CONFIG "sentence_bert_config.json"
// Our key in config_sentence_transformers.json: the whole prompt templates ({title}, a suffix),
// which sentence-transformers' prefix prompts cannot hold.
#define SN_EXPORT_TEMPLATES_KEY "scalingnote_prompt_templates"
// And what the tower encodes (SN_EXPORT_ROLE_*): sn_embed's default prompt. Not sentence-transformers'
// default_prompt_name, whose every load logs a warning; its users call encode_query/encode_document.
#define SN_EXPORT_ROLE_KEY "scalingnote_role"

// dir + "/" + name into out; -1 with err when it does not fit.
int sn_export_join(char *out, size_t size, const char *dir, const char *name, char *err, size_t errlen);
// root printed into dir/name (atomic write); -1 with err.
int sn_export_write_json(const char *dir, const char *name, const cJSON *root, char *err, size_t errlen);
// The tokenizer files in dir made to reproduce training's ids under AutoTokenizer (export_tokenizer.c).
int sn_export_write_tokenizer(const char *dir, const sn_export_info *info, char *err, size_t errlen);
