"""``python -m hpcfed.study configs/study/NAME.yaml [key=value ...] [--dry-run | --report]``."""

import sys

from hpcfed.study.runner import cli

sys.exit(cli())
