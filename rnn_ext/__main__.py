"""``python -m rnn_ext``: see :mod:`rnn_ext.cli`."""

import sys

from .cli import main

sys.exit(main())
