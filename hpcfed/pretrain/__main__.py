"""``python -m hpcfed.pretrain``: see :mod:`hpcfed.pretrain.cli`."""

import sys

from hpcfed.pretrain.cli import main

sys.exit(main())
