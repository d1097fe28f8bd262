"""Lesson 6, section "Multi-output model": CharSeqRnn predicts after every character of
non-overlapping 8-character windows; the loss is rnn_ext.seq_nll_loss (the notebook's
nll_loss_seq, fused).

Run: python python/lesson6_4_multi_output.py   (under a minute on 2 CPU cores)
"""
import torch

import rnn_ext
from rnn_ext.lesson import CharSeqRnn, fit, lesson_data, set_lrs

from _args import parse_args  # python/_args.py: --help, --threads

parse_args(__doc__)

md = lesson_data("seq", bs=512)  # 75,111 windows; split as get_cv_idxs(len(xs) - cs - 1)
print("xs[:2] =", md.trn_x[:2].tolist(), "ys[:2] =", md.trn_y[:2].tolist())

torch.manual_seed(42)
m = CharSeqRnn(len(md.vocab), n_fac=42)
opt = torch.optim.Adam(m.parameters(), 1e-3)
fit(m, md, 4, opt, rnn_ext.seq_nll_loss, seed=42,
    notebook=[(2.59241, 2.40251), (2.28474, 2.19859), (2.13883, 2.08836), (2.04892, 2.01564)])
set_lrs(opt, 1e-4)
fit(m, md, 1, opt, rnn_ext.seq_nll_loss, seed=42, epoch_offset=4, header=False,
    notebook=[(1.99819, 2.00106)])
