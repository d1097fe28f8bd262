"""Lesson 6, section "Identity init!": CharSeqRnn with rnn.weight_hh_l0 = I (Le, Jaitly and
Hinton 2015), trained at a 10x higher learning rate; then it writes some Nietzsche, carrying the
hidden state from character to character (fused rnn_ext.ops.elman_cell steps).

This is also what ``python -m rnn_ext train`` does by default.

Run: python python/lesson6_5_identity_init.py   (about a minute on 2 CPU cores)
"""
import torch

import rnn_ext
from rnn_ext.lesson import CharSeqRnn, fit, generate, identity_init_, lesson_data, set_lrs

from _args import parse_args  # python/_args.py: --help, --threads

parse_args(__doc__)

md = lesson_data("seq", bs=512)
torch.manual_seed(42)
m = identity_init_(CharSeqRnn(len(md.vocab), n_fac=42))
opt = torch.optim.Adam(m.parameters(), 1e-2)
fit(m, md, 4, opt, rnn_ext.seq_nll_loss, seed=42,
    notebook=[(2.39428, 2.21111), (2.10381, 2.03275), (1.99451, 1.96393), (1.93492, 1.91763)])
set_lrs(opt, 1e-3)
fit(m, md, 4, opt, rnn_ext.seq_nll_loss, seed=42, epoch_offset=4, header=False,
    notebook=[(1.84035, 1.85742), (1.82896, 1.84887), (1.81879, 1.84281), (1.81337, 1.83801)])

print(generate(m, "for thos", 400, md.vocab, temperature=0.8,
               generator=torch.Generator().manual_seed(0)))
