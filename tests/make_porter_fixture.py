#!/usr/bin/env python3
"""Writes tests/fixtures/porter/pairs.tsv: word<TAB>stem pairs from NLTK's PorterStemmer in
ORIGINAL_ALGORITHM mode (the 1980 paper's rules, as host/eval/porter.c implements them).

The words: the paper's examples, the toy corpus's own words, words built to reach every rule of every step, and the distinct
lower-case words of Python's own documentation (pydoc_data.topics, shipped with Python: English
prose with no download). The tests read the committed file and never need NLTK:
  pip install nltk && python3 tests/make_porter_fixture.py
"""
import os
import re

from nltk.stem.porter import PorterStemmer
from pydoc_data.topics import topics

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "porter", "pairs.tsv")
MAX_DOC_WORDS = 3000  # every n-th distinct documentation word, for a fixture of some 100 KiB

PAPER_EXAMPLES = """
caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated troubled sized
hopping tanned falling hissing fizzed failing filing happy sky relational conditional rational
valenci hesitanci digitizer conformabli radicalli differentli vileli analogousli vietnamization
predication operator feudalism decisiveness hopefulness callousness formaliti sensitiviti
sensibiliti triplicate formative formalize electriciti electrical hopeful goodness revival allowance
inference airliner gyroscopic adjustable defensible irritant replacement adjustment dependent
adoption homologou communism activate angulariti homologous effective bowdlerize probate rate
cease controll roll generalization generalizations oscillators hopefully a is as us y ys yes
""".split()

# Words of tests/cpu/test_bm25_reference.py's toy corpus that the lists below may miss.
TOY_WORDS = "catenin naive connect connected connecting connection connections".split()

# Stems ending in the letters the conditions look at (m, *v*, *d, *o, *s/*t), with each suffix.
STEMS = ["bowl", "fil", "trot", "cri", "agr", "pl", "sens", "adopt", "conduct", "fizz", "hop", "tann",
         "say", "toy", "syzygy", "rhythm", "queue", "war", "box", "show"]
SUFFIXES = ["s", "es", "ies", "sses", "ed", "eed", "ing", "y", "ational", "tional", "enci", "anci",
            "izer", "abli", "alli", "entli", "eli", "ousli", "ization", "ation", "ator", "alism",
            "iveness", "fulness", "ousness", "aliti", "iviti", "biliti", "icate", "ative", "alize",
            "iciti", "ical", "ful", "ness", "al", "ance", "ence", "er", "ic", "able", "ible", "ant",
            "ement", "ment", "ent", "ion", "ou", "ism", "ate", "iti", "ous", "ive", "ize", "e", "ll"]


def main():
    words = set(PAPER_EXAMPLES) | set(TOY_WORDS)
    words.update(stem + suffix for stem in STEMS for suffix in SUFFIXES)
    doc_words = sorted({w for text in topics.values() for w in re.findall(r"[a-z]+", text)})
    step = max(1, len(doc_words) // MAX_DOC_WORDS)
    words.update(doc_words[::step])
    stemmer = PorterStemmer(mode=PorterStemmer.ORIGINAL_ALGORITHM)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        for w in sorted(words):
            f.write(f"{w}\t{stemmer.stem(w, to_lowercase=False)}\n")
    print(f"{OUT}: {len(words)} pairs")


if __name__ == "__main__":
    main()
