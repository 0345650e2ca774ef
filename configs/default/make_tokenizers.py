#!/usr/bin/env python3
"""Generates the tokenizers of the built-in default run (committed beside this script):

  decoder/tokenizer.json  byte-level BPE (GPT-2 pre-tokenizer), 4096 tokens, <|endoftext|> as EOS
  student/tokenizer.json  WordPiece, lower-cased, [CLS] $A [SEP], 4096 tokens (+ vocab.txt)

trained with Hugging Face `tokenizers` on the English package descriptions of the machine's apt lists
(the same text the default dataset is built from; no pretrained tokenizer can be downloaded here).
Re-run: apt-get update -o Acquire::Languages=en && pip install tokenizers &&
        python3 configs/default/make_tokenizers.py
"""
import glob, os, subprocess, sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 4096
LISTS = "/var/lib/apt/lists"


def descriptions():
    files = sorted(glob.glob(os.path.join(LISTS, "*_i18n_Translation-en*")))
    if not files:
        sys.exit("no Translation-en lists: run apt-get update -o Acquire::Languages=en")
    for path in files:
        text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], check=True,
                              capture_output=True).stdout.decode("utf-8", "replace")
        desc = []
        for line in text.split("\n"):
            if line.startswith("Description-en:"):
                if desc:
                    yield "\n".join(desc)
                desc = [line[len("Description-en:"):].strip()]
            elif line.startswith(" ") and desc:
                desc.append("" if line.strip() == "." else line.strip())
            elif not line.strip() and desc:
                yield "\n".join(desc)
                desc = []
        if desc:
            yield "\n".join(desc)


def main():
    texts = list(descriptions())
    print(f"{len(texts)} descriptions", file=sys.stderr)

    bpe = Tokenizer(models.BPE())
    # Qwen2's normaliser and pre-tokenizer: transformers 5 loads a qwen2 model's tokenizer as
    # Qwen2Tokenizer, which builds these whatever tokenizer.json says, so any other pipeline would
    # give AutoTokenizer other ids than training.
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    os.makedirs(os.path.join(HERE, "decoder"), exist_ok=True)
    bpe.save(os.path.join(HERE, "decoder", "tokenizer.json"))

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=VOCAB, special_tokens=specials, show_progress=False))
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", wp.token_to_id("[CLS]")), ("[SEP]", wp.token_to_id("[SEP]"))])
    os.makedirs(os.path.join(HERE, "student"), exist_ok=True)
    wp.save(os.path.join(HERE, "student", "tokenizer.json"))
    vocab = sorted(wp.get_vocab().items(), key=lambda kv: kv[1])
    with open(os.path.join(HERE, "student", "vocab.txt"), "w") as f:
        f.writelines(tok + "\n" for tok, _ in vocab)
    print(f"decoder vocab {bpe.get_vocab_size()}, student vocab {wp.get_vocab_size()}", file=sys.stderr)


if __name__ == "__main__":
    main()
