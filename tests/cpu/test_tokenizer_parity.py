#!/usr/bin/env python3
"""Parity of build/sn_tokenize with Hugging Face `tokenizers` (the reference).

Usage: test_tokenizer_parity.py BUILD_DIR. Skips (exit 77) when `tokenizers` is not importable or
the shared folder (env SN_SHARED_DIR, else <source>/../shared) is absent.

Compared, line by line, with add_special_tokens both True and False:
  - qwen3: tokenizers.Tokenizer.from_file(qwen3/tokenizer.json)
  - gpt2: GPT-2's original encoder.json + vocab.bpe, against the GPT2TokenizerFast equivalent built
    in `tokenizers`: models.BPE.from_file, ByteLevel pre-tokenizer (add_prefix_space=False) and
    <|endoftext|> as a special added token.
  - WordPiece tokenizers trained here on scifact text (uncased and cased), loaded by the C side
    both from their tokenizer.json and from a vocab.txt.
over all of scifact (titles, texts, queries) and hand-written hard cases. Texts with invalid UTF-8
go through sn_tokenize's plain-line mode as raw bytes; Python sees bytes.decode('utf-8', 'replace').
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import time

SKIP = 77

HARD_CASES = [
    "", " ", "  ", "\n", "\r\n", "\t", "a", "Hello world", " Hello  world ", "hello\n\nworld\n",
    "It's, we're, they've, I'm, you'll, he'd, IT'S, WE'RE, They'Ve, 'S 'T", "don't 's 'll 'LL '",
    "Ünïcödé àccénts: café, naïve, coöperate, façade", "e\u0301 a\u0300 o\u0308 n\u0303 combining",
    "A\u030a\u0301 \u1e9b\u0323 q\u0307\u0323 \u0344", "\u1100\u1161\u11a8 \uac00 \u1100\u1161",
    "中文分词测试：我爱北京天安门。", "日本語のテキスト、カタカナ、ひらがな", "한국어 텍스트 입니다",
    "العربية نص تجريبي مع أرقام ١٢٣٤", "עברית", "Ελληνικά ΣΊΣΥΦΟΣ", "Русский текст, ЁЖИК",
    "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇺🇸 ❤️", "math ∑∫√∞ ≤ ≥ ≠ ±", "   leading spaces", "trailing spaces    ",
    " " * 100 + "x", "x" + " " * 257, "\t\t\ttabs\t and\t\tspaces", "line1\n\n\n\nline2\r\n\r\nline3",
    "   \n   \n   x", "1234567890", "12 345 6789 0.5 1e-10 3,141,592", "٠١٢٣٤٥٦٧٨٩ ①②③ ⅣⅤ ½¾",
    "9" * 200, "a1b2c3 x86_64 v2.0.1", "$100 #hashtag @user http://example.com/a?b=c&d=e",
    "<|endoftext|>", "text<|endoftext|>more", " <|im_start|>user\nhi<|im_end|>\n",
    "<|endoftext|><|endoftext|>", "<|endoftext", "[CLS] [SEP] [MASK] x[UNK]y [cls]",
    "<tool_call>\n{}\n</tool_call>", "ALLCAPS MiXeD cAsE", "snake_case camelCase kebab-case",
    "...!!!???---___***", "'quotes' \"double\" «guillemets» „low“", "\u00a0nbsp\u2003em\u3000ideographic",
    "zero\u200bwidth\u200djoiner\ufeffbom", "control\x01\x02\x7f chars\x0b\x0c\x85", "\u0130stanbul ß ẞ ﬁ Å",
    "ſ 's 'ſ", "a\u2028b\u2029c", "supplementary 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𠀀𠀁 𫠠", "private \ue000 use", "mixed中English混合text",
    "x" * 150, "supercalifragilisticexpialidocious" * 4, "ab" * 300, "a\u0378b unassigned",
]

# Raw byte lines (no newline inside, not starting with '{') with invalid UTF-8.
INVALID_UTF8 = [
    b"bad \xff byte", b"\xc3\x28 bad second", b"\xe2\x82 truncated three", b"\xf0\x9f\x98 truncated four",
    b"\xf0\x80\x80\x80 overlong", b"\xed\xa0\x80 surrogate", b"\xc0\xaf overlong slash", b"\xf5\x80 too big",
    b"tail \xe2", b"\x80\x80\x80 lone continuations", b"ok \xce\xbb then \xfe\xfe", b"\xf4\x90\x80\x80 past max",
    b"nul \x00 byte", b"\x00", b"a\x00\x00b",  # NUL goes by raw lines: JSONL's \u0000 is cut by cJSON
]


# Pieces that random texts are built from: every class the pre-tokenizer regexes distinguish, and
# the boundaries between them (contractions, digit runs, space runs before letters, newlines).
RANDOM_PIECES = [" ", "  ", "   ", "\n", "\r\n", "\r", "\t", "\u00a0", "\u3000", "\u2028", "a", "Z", "word",
                 "The", "é", "ß", "e\u0301", "\u0308", "\u0301\u0323", "0", "7", "42", "12345", "٣", "½", "Ⅻ",
                 "'", "'s", "'S", "'ll", "'Ve", "'d", "'x", ".", ",", "!?", "-", "_", "#", "$", "<", ">", "(", ")",
                 "...", "中", "文字", "😀", "👍🏽", "\u200d", "<|endoftext|>", "[CLS]", "[SEP]", "\u1100", "\u1161",
                 "\u11a8", "가", "Å", "ﬁ", "İ", "\u0085", "\x0b", "\ufffd", "\ue000", "ـ", "ع"]


# Added tokens with lstrip/rstrip/single_word, and the text around them.
ADDED_TOKEN_PIECES = ["<mask>", "[R]", "qqzx", "é", "_", "1", "\u2003", "\u0301", " ", "  ", "a", "\n"]
# Added tokens with normalized=True are matched in the normalizer's output by their normalized form.
NORMALIZED_TOKEN_PIECES = ["CoVid", "covid", "COVID", "Ünï", "uni", "UNÏ", "ab cd", "AB  CD", "ab", " ", "x", "[CLS]"]


def random_texts(count, seed=1234, pieces=RANDOM_PIECES):
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(count)]


def shared_dir():
    if os.environ.get("SN_SHARED_DIR"):
        return os.environ["SN_SHARED_DIR"]
    source = os.environ.get("SN_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
    return os.path.join(source, "..", "shared")


def scifact_texts(shared):
    texts = []
    with open(os.path.join(shared, "data/scifact/corpus.jsonl"), encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            texts += [d.get("title", ""), d.get("text", "")]
    with open(os.path.join(shared, "data/scifact/queries.jsonl"), encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
    return texts


def run_c(sn_tokenize, tokenizer, path, no_special):
    cmd = [sn_tokenize, "--tokenizer", tokenizer, "--input", path] + (["--no-special"] if no_special else [])
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.decode(errors='replace')}")
    return [json.loads(line) for line in out.stdout.decode().splitlines()]


def compare(name, reference, sn_tokenize, c_path, texts, raw_lines, tmp):
    """Returns the number of mismatching lines (prints the first one)."""
    jsonl = os.path.join(tmp, "texts.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    raw = os.path.join(tmp, "raw.txt")
    with open(raw, "wb") as f:
        f.write(b"\n".join(raw_lines) + b"\n")
    all_texts = texts + [b.decode("utf-8", "replace") for b in raw_lines]
    bad = 0
    for add_special in (True, False):
        t0 = time.time()
        got = run_c(sn_tokenize, c_path, jsonl, not add_special) + run_c(sn_tokenize, c_path, raw, not add_special)
        t1 = time.time()
        want = [e.ids for e in reference.encode_batch(all_texts, add_special_tokens=add_special)]
        t2 = time.time()
        if len(got) != len(want):
            print(f"FAIL {name}: {len(got)} lines from sn_tokenize, {len(want)} expected")
            return 1
        mism = [i for i in range(len(want)) if got[i] != want[i]]
        if mism:
            i = mism[0]
            print(f"FAIL {name} add_special={add_special}: {len(mism)}/{len(want)} lines differ; first: "
                  f"text={all_texts[i][:300]!r}\n  c ={got[i][:80]}\n  hf={want[i][:80]}")
        print(f"{name} add_special={add_special}: {len(want) - len(mism)}/{len(want)} lines identical "
              f"(C {t1 - t0:.1f}s, HF {t2 - t1:.1f}s)")
        bad += len(mism)
    return bad


def train_wordpiece(texts, lowercase, tmp):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None if lowercase else False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=4000, special_tokens=specials)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(s, tok.token_to_id(s)) for s in ("[CLS]", "[SEP]")])
    folder = os.path.join(tmp, "wordpiece_" + ("uncased" if lowercase else "cased"))
    os.makedirs(folder)
    tok.save(os.path.join(folder, "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    vocab_dir = os.path.join(folder, "txt")
    os.makedirs(vocab_dir)
    with open(os.path.join(vocab_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(token + "\n" for token, _ in vocab))
    with open(os.path.join(vocab_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": lowercase}, f)
    return tok, folder


def main():
    if len(sys.argv) < 2:
        print("usage: test_tokenizer_parity.py BUILD_DIR")
        return 2
    try:
        import tokenizers
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        print("SKIP: the python module `tokenizers` is not importable (pip install tokenizers)")
        return SKIP
    shared = shared_dir()
    if not os.path.isdir(os.path.join(shared, "tokenizers")) or not os.path.isdir(os.path.join(shared, "data/scifact")):
        print(f"SKIP: shared data folder {shared} (tokenizers/, data/scifact/) is absent")
        return SKIP
    sn_tokenize = os.path.join(sys.argv[1], "sn_tokenize")
    if not os.path.exists(sn_tokenize):
        print(f"FAIL: {sn_tokenize} is not built")
        return 1
    print(f"tokenizers {tokenizers.__version__}, shared {shared}")
    corpus = scifact_texts(shared)
    hard = HARD_CASES + random_texts(3000)
    texts = corpus + hard
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        qwen = os.path.join(shared, "tokenizers/qwen3")
        bad += compare("qwen3", Tokenizer.from_file(os.path.join(qwen, "tokenizer.json")), sn_tokenize, qwen,
                       texts, INVALID_UTF8, tmp)
        gpt2_dir = os.path.join(shared, "tokenizers/gpt2")
        gpt2 = Tokenizer(models.BPE.from_file(os.path.join(gpt2_dir, "encoder.json"), os.path.join(gpt2_dir, "vocab.bpe")))
        gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        gpt2.decoder = decoders.ByteLevel()
        gpt2.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
        bad += compare("gpt2", gpt2, sn_tokenize, gpt2_dir, texts, INVALID_UTF8, tmp)
        sample = corpus[::7] + corpus[-1109:] + hard  # a corpus sample, the queries, the hard cases
        # The same GPT-2 saved as a tokenizer.json (ByteLevel with its built-in regex, merge pairs).
        os.makedirs(os.path.join(tmp, "gpt2_json"))
        gpt2.save(os.path.join(tmp, "gpt2_json", "tokenizer.json"))
        bad += compare("gpt2/tokenizer.json", gpt2, sn_tokenize, os.path.join(tmp, "gpt2_json"), sample,
                       INVALID_UTF8, tmp)
        # Added tokens that strip white space around them or must stand alone as a word.
        gpt2.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
        gpt2.add_tokens([AddedToken("[R]", rstrip=True), AddedToken("qqzx", single_word=True),
                         AddedToken("é", single_word=True)])
        os.makedirs(os.path.join(tmp, "gpt2_added"))
        gpt2.save(os.path.join(tmp, "gpt2_added", "tokenizer.json"))
        bad += compare("gpt2+added_tokens", gpt2, sn_tokenize, os.path.join(tmp, "gpt2_added"),
                       random_texts(2000, 99, ADDED_TOKEN_PIECES + RANDOM_PIECES), INVALID_UTF8, tmp)
        # RoBERTa-style: ByteLevel with add_prefix_space=True.
        gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        os.makedirs(os.path.join(tmp, "gpt2_prefix"))
        gpt2.save(os.path.join(tmp, "gpt2_prefix", "tokenizer.json"))
        bad += compare("gpt2+add_prefix_space", gpt2, sn_tokenize, os.path.join(tmp, "gpt2_prefix"), sample,
                       INVALID_UTF8, tmp)
        # Llama-3's pattern (digits in groups of up to three) on Qwen3's vocabulary.
        with open(os.path.join(qwen, "tokenizer.json"), encoding="utf-8") as f:
            config = json.load(f)
        split = config["pre_tokenizer"]["pretokenizers"][0]
        split["pattern"]["Regex"] = split["pattern"]["Regex"].replace("\\p{N}|", "\\p{N}{1,3}|")
        llama_path = os.path.join(tmp, "llama3_style.json")
        with open(llama_path, "w", encoding="utf-8") as f:
            json.dump(config, f)
        bad += compare("llama3-pattern", Tokenizer.from_file(llama_path), sn_tokenize, llama_path, sample,
                       INVALID_UTF8, tmp)
        # A Split followed by ByteLevel(add_prefix_space=True): the space goes before every piece.
        config["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = True
        with open(llama_path, "w", encoding="utf-8") as f:
            json.dump(config, f)
        bad += compare("llama3-pattern+add_prefix_space", Tokenizer.from_file(llama_path), sn_tokenize, llama_path,
                       sample[-3100:], INVALID_UTF8, tmp)
        # WordPiece: trained on a part of scifact, checked on the sample.
        train, check = corpus[:2000], sample
        for lowercase in (True, False):
            tok, folder = train_wordpiece(train, lowercase, tmp)
            label = "wordpiece_" + ("uncased" if lowercase else "cased")
            bad += compare(label + "/tokenizer.json", tok, sn_tokenize, os.path.join(folder, "tokenizer.json"),
                           check, INVALID_UTF8, tmp)
            bad += compare(label + "/vocab.txt", tok, sn_tokenize, os.path.join(folder, "txt"), check,
                           INVALID_UTF8, tmp)
            tok.add_tokens([AddedToken(t, normalized=True) for t in ("CoVid", "Ünï", "ab cd")])
            tok.save(os.path.join(folder, "added.json"))
            bad += compare(label + "+normalized_added_tokens", tok, sn_tokenize, os.path.join(folder, "added.json"),
                           random_texts(1000, 7, NORMALIZED_TOKEN_PIECES + RANDOM_PIECES), INVALID_UTF8, tmp)
    print("PASS" if bad == 0 else f"FAIL: {bad} mismatching lines")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
