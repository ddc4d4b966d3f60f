"""Round-end callbacks of the main process: metrics file and progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

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
