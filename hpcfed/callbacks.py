"""Round-end callbacks of the main process: metrics file and progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional


class MetricsWriter:
    """Appends one JSON line per round to ``path`` (flushed each round, so a crash loses nothing)."""

    def __init__(self, path: Path, *, truncate: bool = True):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "w" if truncate else "a", encoding="utf-8")

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
