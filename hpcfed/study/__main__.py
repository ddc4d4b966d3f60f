"""``python -m hpcfed.study [run | report | list] configs/study/NAME.yaml [key=value ...] [options]``."""

import sys

from hpcfed.study.cli import cli

sys.exit(cli())
