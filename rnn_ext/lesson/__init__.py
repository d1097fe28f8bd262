"""fast.ai 2018 Part 1, Lesson 6 (notebook ``lesson6-rnn``) on rnn_ext's fused operators.

- :mod:`.data`: the vocabulary, the three datasets, the split, the batches;
- :mod:`.models`: Char3Model, CharLoopModel, CharLoopConcatModel, CharRnn, CharSeqRnn and
  the identity initialisation;
- :mod:`.train`: ``fit``, ``set_lrs`` and checkpoints;
- :mod:`.generate`: ``get_next``, ``get_next_n`` and (stateful) sampling;
- :mod:`.recipes`: the notebook's six runs and their reference numbers.
"""

from .data import (LessonData, Vocab, char3_dataset, cv_idxs, lesson_data, load_nietzsche,
                   overlapping_windows, seq_windows)
from .generate import generate, get_next, get_next_n, sample_next
from .models import (MODELS, N_FAC, N_HIDDEN, Char3Model, CharLoopConcatModel, CharLoopModel,
                     CharRnn, CharSeqRnn, build_model, identity_init_)
from .recipes import LESSON_ROWS, RECIPES, Recipe, loss_for, train_recipe
from .train import (CheckpointError, EpochStats, fit, load_checkpoint, model_from_checkpoint,
                    save_checkpoint, set_lrs)

__all__ = [
    "LessonData", "Vocab", "char3_dataset", "cv_idxs", "lesson_data", "load_nietzsche",
    "overlapping_windows", "seq_windows",
    "generate", "get_next", "get_next_n", "sample_next",
    "MODELS", "N_FAC", "N_HIDDEN", "Char3Model", "CharLoopConcatModel", "CharLoopModel",
    "CharRnn", "CharSeqRnn", "build_model", "identity_init_",
    "LESSON_ROWS", "RECIPES", "Recipe", "loss_for", "train_recipe",
    "CheckpointError", "EpochStats", "fit", "load_checkpoint", "model_from_checkpoint",
    "save_checkpoint", "set_lrs",
]
