"""Preemption signals: SIGTERM (Slurm preemption / scancel) and SIGUSR1 (sbatch --signal=B:USR1@120).

The handler only records the request. The round loop carries it in the round's single all-reduce, so every
rank stops after the same round, writes the same checkpoint and exits with :data:`EXIT_PREEMPTED`.
"""

from __future__ import annotations

import signal
from typing import Optional

EXIT_PREEMPTED = 75
"""Exit status after a checkpoint written on a stop signal (EX_TEMPFAIL): 'requeue me'."""
EXIT_FAILURES = 3
"""Exit status after a checkpoint written because too many clients failed in one round."""


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (after :meth:`install`); read by the round loop."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handler(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.signal = signum

    def install(self, signals=(signal.SIGTERM, signal.SIGUSR1)) -> "StopFlag":
        for s in signals:
            signal.signal(s, self._handler)
        return self
