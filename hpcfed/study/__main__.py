"""``python -m hpcfed.study [run | report | list] configs/study/NAME.yaml [key=value ...] [options]``."""

import os
import sys

from hpcfed.study.cli import cli

try:
    code = cli()
    sys.stdout.flush()
except BrokenPipeError:  # `... list STUDY | head`: the reader left; end quietly, as Unix tools do
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
    code = 0
sys.exit(code)
