"""Lesson 6, section "Three char model": characters 1-3 predict the 4th.

Char3Model's recurrence ``h = tanh(l_hidden(h + relu(l_in(e(c)))))`` runs as one fused
rnn_ext.ops.elman_rnn. The notebook validated on one sample; this uses a 20% split.

Run: python python/lesson6_1_three_char_model.py   (about 10 s on 2 CPU cores)
"""
import torch
import torch.nn.functional as F

from rnn_ext.lesson import (Char3Model, Vocab, char3_dataset, fit, get_next, lesson_data,
                            load_nietzsche, set_lrs)

from _args import parse_args  # python/_args.py: --help, --threads

parse_args(__doc__)

torch.manual_seed(42)
text = load_nietzsche()
xs, y = char3_dataset(Vocab.from_text(text).encode(text))
print(xs.shape, xs[:4].t().tolist(), y[:4].tolist())  # (200295, 3), the notebook's x1..x3, y
md = lesson_data("char3", bs=512)  # the same windows, 20% for validation

m = Char3Model(len(md.vocab), n_fac=42)
opt = torch.optim.Adam(m.parameters(), 1e-2)
fit(m, md, 1, opt, F.nll_loss, seed=42, notebook=[(2.09627, None)])
set_lrs(opt, 0.001)
fit(m, md, 1, opt, F.nll_loss, seed=42, epoch_offset=1, header=False,
    notebook=[(1.84525, None)])

for s in ["y. ", "ppl", " th", "and"]:  # the notebook: 'T', 'e', 'e', ' '
    print(repr(s), "->", repr(get_next(m, s)))
