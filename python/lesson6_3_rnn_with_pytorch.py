"""Lesson 6, section "RNN with pytorch": CharRnn, with rnn_ext.RNN in place of nn.RNN.

Run: python python/lesson6_3_rnn_with_pytorch.py   (about a minute on 2 quiet CPU cores)
"""
import torch
import torch.nn.functional as F

from rnn_ext.lesson import CharRnn, fit, get_next, get_next_n, lesson_data, set_lrs

from _args import parse_args  # python/_args.py: --help, --threads

parse_args(__doc__)

md = lesson_data("overlap", bs=512)
torch.manual_seed(42)
m = CharRnn(len(md.vocab), n_fac=42)
print(m)

opt = torch.optim.Adam(m.parameters(), 1e-3)
fit(m, md, 4, opt, F.nll_loss, seed=42,
    notebook=[(1.86065, 1.84255), (1.68014, 1.67387), (1.58828, 1.59169), (1.52989, 1.54942)])
set_lrs(opt, 1e-4)
fit(m, md, 2, opt, F.nll_loss, seed=42, epoch_offset=4, header=False,
    notebook=[(1.46841, 1.50966), (1.46482, 1.5039)])

print(repr(get_next(m, "for thos")))  # the notebook: 'e'
print(repr(get_next_n(m, "for thos", 40)))
# the notebook: 'for those the same the same the same the same th'
