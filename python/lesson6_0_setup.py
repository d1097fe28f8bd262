"""Lesson 6 (fast.ai 2018, notebook lesson6-rnn), section "Setup": the corpus and its vocabulary.

Run: python python/lesson6_0_setup.py
"""
from rnn_ext.lesson import Vocab, load_nietzsche

from _args import parse_args  # python/_args.py: --help, --threads

parse_args(__doc__)

text = load_nietzsche()
print("corpus length:", len(text))  # 600893
print(repr(text[:400]))

vocab = Vocab.from_text(text)  # sorted characters with "\0" inserted at index 0
print("total chars:", len(vocab))  # 85
print(repr("".join(vocab.chars[1:-6])))

idx = vocab.encode(text)  # the notebook's idx
print(idx[:10].tolist())  # [40, 42, 29, 30, 25, 27, 29, 1, 1, 1]
print(repr(vocab.decode(idx[:70])))
