"""Round-end callbacks of the main process: metrics file, progress bar or plain round lines, checkpoints."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, TextIO

from hpcfed.checkpoint import save_checkpoint


class MetricsWriter:
    """Writes one JSON line per round to ``path`` (flushed each round, so a crash loses nothing).

    ``history`` (the rounds restored from a checkpoint) is written first, replacing the file's content, so
    a resumed run's file has each round exactly once.
    """

    def __init__(self, path: Path, history: Sequence[dict] = ()):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "w", encoding="utf-8")
        for m in history:
            self.on_round_end(None, m)

    def on_round_end(self, loop, metrics: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self._fh.write(json.dumps(clean) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class ProgressBar:
    """tqdm bar over rounds showing round, train loss and test accuracy."""

    def __init__(self, total_rounds: int, initial: int = 0, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_rounds, initial=initial, desc="rounds", unit="round", disable=not enabled,
                        dynamic_ncols=True)
        self._last_acc: Optional[float] = None

    def on_round_end(self, loop, metrics: dict) -> None:
        if "test_acc" in metrics:
            self._last_acc = metrics["test_acc"]
        post = {}
        if "train_loss" in metrics:
            post["loss"] = f"{metrics['train_loss']:.4f}"
        if self._last_acc is not None:
            post["acc"] = f"{self._last_acc:.4f}"
        self.bar.set_postfix(post, refresh=False)
        if metrics.get("round", 0) > 0:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units: '512 B', '2.1 kB', '3.4 MB', '1.2 GB', '5.0 TB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class RoundLine:
    """One plain line per round on ``stream`` (default: ``sys.stderr`` at the time of the round), for logs that
    are not a terminal (a Slurm ``.out`` file, a pipe), where a progress bar leaves only carriage returns::

        2026-01-30 12:00:03 hpcfed: round 3/20 loss 0.4123 acc 0.8012 bal_acc 0.7710 f1 0.7650 time 12.3 s bytes 2.1 MB

    ``bytes`` is the round's communicated bytes (``bytes_up`` + ``bytes_down``); the round's ``warnings`` follow
    when there are any. Metrics a round does not have (no evaluation that round) are left out.
    """

    FIELDS = (("train_loss", "loss"), ("train_loss_start", "start_loss"), ("test_acc", "acc"),
              ("test_balanced_acc", "bal_acc"), ("test_macro_f1", "f1"))

    def __init__(self, total_rounds: int, stream: Optional[TextIO] = None):
        self.total_rounds, self.stream = total_rounds, stream

    def line(self, metrics: dict) -> str:
        """The line for one round's ``metrics`` (without timestamp)."""
        parts = [f"round {metrics.get('round', 0)}/{self.total_rounds}"]
        for key, label in self.FIELDS:
            v = metrics.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                parts.append(f"{label} {v:.4f}")
        if "round_s" in metrics:
            parts.append(f"time {metrics['round_s']:.1f} s")
        if "bytes_up" in metrics or "bytes_down" in metrics:
            parts.append(f"bytes {human_bytes(metrics.get('bytes_up', 0) + metrics.get('bytes_down', 0))}")
        if metrics.get("warnings"):
            parts.append("warnings " + ",".join(metrics["warnings"]))
        return " ".join(parts)

    def on_round_end(self, loop, metrics: dict) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} hpcfed: {self.line(metrics)}", file=stream, flush=True)

    def close(self) -> None:
        pass


def round_reporters(total_rounds: int, *, initial: int = 0, progress: bool = True,
                    stream: Optional[TextIO] = None) -> list:
    """How rounds are shown on rank 0: a tqdm :class:`ProgressBar` (when ``progress``) if ``stream`` (default
    ``sys.stderr``) is a terminal, else a :class:`RoundLine` per round (whatever ``progress`` says: a log file
    always gets its lines)."""
    stream_ = stream if stream is not None else sys.stderr
    isatty = getattr(stream_, "isatty", None)
    if isatty is not None and isatty():
        return [ProgressBar(total_rounds, initial=initial, enabled=progress)]
    return [RoundLine(total_rounds, stream)]


class CheckpointWriter:
    """Saves the loop's state every ``every_rounds`` rounds, after the last round, and when the loop stops
    early (preemption signal, too many failed clients). Used on rank 0 only."""

    def __init__(self, ckpt_dir: Path, *, every_rounds: int, keep_last: int, total_rounds: int,
                 config_hash: str):
        self.ckpt_dir, self.every, self.keep_last = ckpt_dir, every_rounds, keep_last
        self.total_rounds, self.config_hash = total_rounds, config_hash
        self.last_saved: Optional[int] = None

    def save(self, loop) -> Path:
        r = loop.state.round
        path = save_checkpoint(self.ckpt_dir, r, loop.state_tensors(), config_hash=self.config_hash,
                               history=loop.state.history, keep_last=self.keep_last)
        self.last_saved = r
        return path

    def on_round_end(self, loop, metrics: dict) -> None:
        r = metrics.get("round", 0)
        if r > 0 and ((self.every and r % self.every == 0) or r == self.total_rounds):
            self.save(loop)

    def on_stop(self, loop, reason: str) -> None:
        if self.last_saved != loop.state.round:
            self.save(loop)

    def close(self) -> None:
        pass
