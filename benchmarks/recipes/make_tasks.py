"""The two derived text tasks of the default-recipe comparison (docs/recipes.md), written from SST-2:

* ``sst2_imb13``: binary sentiment with 13 % positives (the share of the held-out spam set of issue #15, where
  the main recipe collapsed onto the majority class): every negative, and the first positives in file order
  until they are 13 % of the rows; train from ``train.tsv``, test from ``dev.tsv`` the same way.
* ``sst2_order4``: 4 classes, sentiment × word order: label = 2 · sentiment + reversed, where ``reversed`` is
  FedYolo's word-order task (:func:`hpcfed.algorithms.fedyolo_tasks.wordorder_rows`: half of the sentences of
  ≥ 4 words, seeded, have their words reversed). A stand-in for a 4-class topic task: no topic data set is
  available offline here, and this one needs both what a sentence says and how it is ordered.

    python -m benchmarks.recipes.make_tasks [--src ../shared/data/sst2] [--out data_cache/derived]

Prints one line per file with its row count and class shares.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from hpcfed.algorithms.fedyolo_tasks import WORDORDER_MIN_WORDS, wordorder_rows

POSITIVE_SHARE = 0.13
WORDORDER_SEED = 0


def read_sst2(path: Path) -> list[tuple[str, int]]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r["sentence"], int(r["label"])) for r in rows]


def imbalanced(rows: list[tuple[str, int]], share: float = POSITIVE_SHARE) -> list[tuple[str, int]]:
    """Every negative; positives (first in file order) until they are ``share`` of the result."""
    neg = sum(1 for _, y in rows if y == 0)
    keep_pos = round(share / (1.0 - share) * neg)
    out, taken = [], 0
    for text, y in rows:
        if y == 1:
            if taken >= keep_pos:
                continue
            taken += 1
        out.append((text, y))
    return out


def order4(rows: list[tuple[str, int]], seed: int = WORDORDER_SEED) -> list[tuple[str, int]]:
    """Sentiment × word order; sentences :func:`wordorder_rows` drops are dropped here too."""
    kept = [y for text, y in rows if len(w := text.split()) >= WORDORDER_MIN_WORDS and w != w[::-1]]
    ordered = wordorder_rows([text for text, _ in rows], seed)
    assert len(ordered) == len(kept)
    return [(text, 2 * y + rev) for (text, rev), y in zip(ordered, kept)]


def write(path: Path, rows: list[tuple[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("sentence\tlabel\n" + "".join(f"{t.replace(chr(9), ' ')}\t{y}\n" for t, y in rows), encoding="utf-8")
    counts = Counter(y for _, y in rows)
    shares = ", ".join(f"{k}: {counts[k] / len(rows):.3f}" for k in sorted(counts))
    print(f"{path}: {len(rows)} rows; class shares {shares}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default="../shared/data/sst2")
    p.add_argument("--out", default="data_cache/derived")
    args = p.parse_args()
    src, out = Path(args.src), Path(args.out)
    for split in ("train", "dev"):
        rows = read_sst2(src / f"{split}.tsv")
        write(out / "sst2_imb13" / f"{split}.tsv", imbalanced(rows))
        write(out / "sst2_order4" / f"{split}.tsv", order4(rows))


if __name__ == "__main__":
    main()
