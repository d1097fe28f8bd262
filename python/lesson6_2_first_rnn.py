"""Lesson 6, section "Our first RNN!": CharLoopModel and CharLoopConcatModel, 8 characters
predict the 9th.

CharLoopModel is an Elman recurrence in disguise (one fused rnn_ext.ops.elman_rnn);
CharLoopConcatModel's first layer per step is a fused rnn_ext.ops.elman_cell (relu) whose two
weights are the column blocks of l_in.weight.

Run: python python/lesson6_2_first_rnn.py   (about 1.5 minutes on 2 quiet CPU cores)
"""
import torch
import torch.nn.functional as F

from rnn_ext.lesson import (CharLoopConcatModel, CharLoopModel, fit, get_next, lesson_data,
                            set_lrs)

from _args import parse_args  # python/_args.py: --help, --threads

parse_args(__doc__)

cs = 8
md = lesson_data("overlap", bs=512, cs=cs)  # 600,884 overlapping windows; get_cv_idxs split
print("xs[:cs, :cs] =", md.trn_x[:cs, :cs].tolist())

torch.manual_seed(42)
m = CharLoopModel(len(md.vocab), n_fac=42)
opt = torch.optim.Adam(m.parameters(), 1e-2)
fit(m, md, 1, opt, F.nll_loss, seed=42, notebook=[(2.02986, 1.99268)])
set_lrs(opt, 0.001)
fit(m, md, 1, opt, F.nll_loss, seed=42, epoch_offset=1, header=False,
    notebook=[(1.73588, 1.75103)])

torch.manual_seed(42)
m = CharLoopConcatModel(len(md.vocab), n_fac=42)
opt = torch.optim.Adam(m.parameters(), 1e-3)
fit(m, md, 1, opt, F.nll_loss, seed=42, notebook=[(1.81654, 1.78501)])
set_lrs(opt, 1e-4)
fit(m, md, 1, opt, F.nll_loss, seed=42, epoch_offset=1, header=False,
    notebook=[(1.69008, 1.69936)])

for s in ["for thos", "part of ", "queens a"]:  # the notebook: 'e', 't', 'n'
    print(repr(s), "->", repr(get_next(m, s)))
