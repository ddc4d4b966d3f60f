"""Bad input gives a one-line DataError naming the file; damaged shards are reported, never read as data;
a failed prepare leaves nothing that looks finished."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcfed.config import ConfigError, DataConfig
from hpcfed.data import DataError, ShardedDataset, ensure_prepared, prepare_shards
from hpcfed.data import shards as shards_mod
from hpcfed.data.synthetic import write_image_folder, write_text_table

TOKENIZER = "unused-because-errors-come-first"  # data errors are raised before the tokenizer is loaded


def text_cfg(tmp_path: Path, source: Path, test_source: Path | None = None, **kw) -> DataConfig:
    args = dict(name="t", kind="text", source=str(source), test_source=str(test_source) if test_source else None,
                partition="iid", num_clients=2, num_shards=1, shard_dir=str(tmp_path / "shards"))
    args.update(kw)
    return DataConfig(**args)


def image_cfg(tmp_path: Path, source: Path, **kw) -> DataConfig:
    args = dict(name="tinyimg", kind="image", source=str(source), test_source=None, partition="iid",
                num_clients=3, num_shards=2, shard_dir=str(tmp_path / "shards"))
    args.update(kw)
    return DataConfig(**args)


def raises_naming(path: Path | str, match: str, call, exc=DataError) -> str:
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg, msg
    assert re.search(match, msg), msg
    return msg


# ---------------------------------------------------------------------------------------------- text sources


def test_missing_column(tmp_path):
    src = tmp_path / "train.tsv"
    src.write_text("text\tlabel\nhello\t0\n")
    raises_naming(src, "no column 'sentence' in header \\(columns: text, label\\)",
                  lambda: prepare_shards(text_cfg(tmp_path, src), TOKENIZER))


def test_unknown_label_in_test_file(tmp_path):
    src = write_text_table(tmp_path / "train.tsv", 10, classes=("neg", "pos"))
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\nfine\tpos\nmeh\tmeh\n")
    raises_naming(dev, "line 3: unknown label 'meh' \\(training labels: neg, pos\\)",
                  lambda: prepare_shards(text_cfg(tmp_path, src, dev), TOKENIZER))


def test_integer_label_out_of_range_in_test_file(tmp_path):
    src = write_text_table(tmp_path / "train.tsv", 10)
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\nfine\t1\nodd\t5\n")
    raises_naming(dev, "line 3: unknown label '5' \\(training labels: 0..1\\)",
                  lambda: prepare_shards(text_cfg(tmp_path, src, dev), TOKENIZER))


@pytest.mark.parametrize("body, match", [
    ("a\t0\nb\tpositive\n", "label column mixes integers and strings \\(line 2: '0', line 3: 'positive'\\)"),
    ("a\t0\nb\t\n", "line 3: empty label"),
    ("a\t0\nb\t-1\n", "line 3: negative label '-1'"),
    ("a\t0\nb\tc\t1\n", "line 3: 3 fields, header has 2"),
    ("", "no rows after the header"),
])
def test_unparsable_rows(tmp_path, body, match):
    src = tmp_path / "train.tsv"
    src.write_text("sentence\tlabel\n" + body)
    raises_naming(src, match, lambda: prepare_shards(text_cfg(tmp_path, src), TOKENIZER))


def test_non_utf8_text_reports_line(tmp_path):
    src = tmp_path / "train.tsv"
    src.write_bytes(b"sentence\tlabel\ngood\t1\ncaf\xe9 au lait\t0\n")
    raises_naming(src, "line 3, column 4: not valid UTF-8 \\(byte 0xe9\\)",
                  lambda: prepare_shards(text_cfg(tmp_path, src), TOKENIZER))


def test_empty_client(tmp_path):
    src = write_text_table(tmp_path / "train.tsv", 3)
    raises_naming(src, "cannot split 3 examples into 5 clients \\(data.partition=iid\\): 5 clients need at least 5",
                  lambda: prepare_shards(text_cfg(tmp_path, src, num_clients=5), TOKENIZER))


def test_fewshot_not_enough_examples(tmp_path):
    src = write_text_table(tmp_path / "train.tsv", 20)
    raises_naming(src, "class 0 has 10 examples; 2 clients x 16 shots need 32",
                  lambda: prepare_shards(text_cfg(tmp_path, src, partition="fewshot"), TOKENIZER))


def test_missing_tokenizer_folder(tmp_path):
    src = write_text_table(tmp_path / "train.tsv", 10)
    raises_naming(tmp_path / "nope", "tokenizer folder not found",
                  lambda: prepare_shards(text_cfg(tmp_path, src), str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="data.tokenizer is null"):
        prepare_shards(text_cfg(tmp_path, src), None)


# ---------------------------------------------------------------------------------------------- image sources


def test_undecodable_image_names_member(tmp_path):
    src = tmp_path / "img.zip"
    write_image_folder(src)
    with zipfile.ZipFile(src, "a") as z:
        z.writestr("train/dog/0099.png", b"not a png at all")
    raises_naming(src, "member train/dog/0099.png: cannot decode image", lambda: prepare_shards(image_cfg(tmp_path, src)))


def test_undecodable_image_in_folder(tmp_path):
    src = tmp_path / "img"
    write_image_folder(src)
    (src / "test" / "cat" / "0000.png").write_bytes(b"\x89PNG broken")
    raises_naming(src / "test" / "cat" / "0000.png", "cannot decode image",
                  lambda: prepare_shards(image_cfg(tmp_path, src)))


def test_image_size_mismatch_and_unknown_test_class(tmp_path):
    src = tmp_path / "img"
    write_image_folder(src, size=8)
    write_image_folder(tmp_path / "other", ("cat",), size=9, train_per_class=1)
    shutil.copy(tmp_path / "other/train/cat/0000.png", src / "train/cat/9999.png")
    raises_naming(src / "train/cat/9999.png", "image is 9x9, earlier images are 8x8; set data.image_size",
                  lambda: prepare_shards(image_cfg(tmp_path, src, num_clients=1, num_shards=1)))
    (src / "train/cat/9999.png").unlink()
    (src / "test/zebra").mkdir()
    shutil.copy(src / "test/cat/0000.png", src / "test/zebra/0000.png")
    raises_naming(src / "test/zebra/0000.png", "class folder 'zebra' is not one of the 3 training classes",
                  lambda: prepare_shards(image_cfg(tmp_path, src)))


def test_bad_image_sources(tmp_path):
    notzip = tmp_path / "img.zip"
    notzip.write_bytes(b"PK but not really a zip")
    raises_naming(notzip, "not a readable zip file", lambda: prepare_shards(image_cfg(tmp_path, notzip)))
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    raises_naming(empty, "no images under train/<class>/", lambda: prepare_shards(image_cfg(tmp_path, empty)))
    write_image_folder(tmp_path / "ok.zip")
    with pytest.raises(ConfigError, match="data.test_source=.*dev.tsv is a text table but data.kind=image"):
        prepare_shards(image_cfg(tmp_path, tmp_path / "ok.zip", test_source="/x/dev.tsv"))


# ---------------------------------------------------------------------------------------------- damaged shards


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("prepared")
    write_image_folder(tmp / "img.zip", train_per_class=10)
    return prepare_shards(image_cfg(tmp, tmp / "img.zip"))


@pytest.fixture
def shard_copy(prepared, tmp_path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    return root


def load_all(root: Path) -> list:
    with ShardedDataset(root) as ds:
        return [ds.load_client(c) for c in range(ds.num_clients)] + [ds.load_test()]


def test_flipped_bytes_in_data_are_detected(shard_copy):
    shard = shard_copy / "shard-00000.h5"
    with h5py.File(shard) as f:
        offset = f["clients/0/x"].id.get_chunk_info(0).byte_offset
    raw = bytearray(shard.read_bytes())
    raw[offset + 10:offset + 20] = bytes(b ^ 0xFF for b in raw[offset + 10:offset + 20])
    shard.write_bytes(bytes(raw))
    raises_naming(shard, "client 0: dataset 'x': unreadable .*; the shard is corrupt \\(failed checksum",
                  lambda: load_all(shard_copy))


def test_flipped_bytes_anywhere_are_reported_or_harmless(prepared, shard_copy):
    """Flip 8 bytes at every 96th offset: loading either raises DataError naming the file or returns exactly the
    original examples (the flip hit unused space). Never wrong data, never another exception."""
    reference = load_all(prepared)
    shard = shard_copy / "shard-00001.h5"
    orig = shard.read_bytes()
    detected = 0
    for off in range(0, len(orig) - 8, 96):
        raw = bytearray(orig)
        raw[off:off + 8] = bytes(b ^ 0xA5 for b in raw[off:off + 8])
        shard.write_bytes(bytes(raw))
        try:
            got = load_all(shard_copy)
        except DataError as e:
            assert str(shard) in str(e) and "\n" not in str(e)
            detected += 1
            continue
        for g, r in zip(got, reference):
            assert np.array_equal(g.x.numpy(), r.x.numpy()) and np.array_equal(g.y.numpy(), r.y.numpy()), off
    assert detected > 0


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_shard(shard_copy, keep):
    shard = shard_copy / "shard-00001.h5"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:int(len(raw) * keep)])
    raises_naming(shard, "truncated or overwritten", lambda: load_all(shard_copy))


def test_not_hdf5(shard_copy):
    shard = shard_copy / "test.h5"
    shard.write_bytes(b"hello" * 100)
    raises_naming(shard, "not an HDF5 file", lambda: load_all(shard_copy))


def test_foreign_shard_other_dataset(shard_copy, tmp_path):
    write_image_folder(tmp_path / "b.zip", train_per_class=10)
    other = prepare_shards(image_cfg(tmp_path, tmp_path / "b.zip", name="other", shard_dir=str(tmp_path / "other")))
    shutil.copy(other / "shard-00000.h5", shard_copy / "shard-00000.h5")
    raises_naming(shard_copy / "shard-00000.h5", "foreign shard: data set 'other', index says 'tinyimg'",
                  lambda: load_all(shard_copy))


def test_foreign_shard_other_prepare_run(shard_copy, tmp_path):
    write_image_folder(tmp_path / "b.zip", train_per_class=10)
    other = prepare_shards(image_cfg(tmp_path, tmp_path / "b.zip", seed=3, shard_dir=str(tmp_path / "other")))
    shutil.copy(other / "shard-00001.h5", shard_copy / "shard-00001.h5")
    raises_naming(shard_copy / "shard-00001.h5", "foreign shard: written by another prepare run",
                  lambda: load_all(shard_copy))


def test_missing_client_group(shard_copy):
    shard = shard_copy / "shard-00000.h5"
    with h5py.File(shard, "a") as f:
        del f["clients/0"]
    # Deleting may keep or change the file size; either way the file is named.
    raises_naming(shard, "client group 'clients/0' missing|index records", lambda: load_all(shard_copy))


def test_schema_version_mismatch(shard_copy):
    with h5py.File(shard_copy / "shard-00000.h5", "a") as f:
        f.attrs["schema_version"] = 999
    raises_naming(shard_copy / "shard-00000.h5", "shard schema version 999, this hpcfed reads 1",
                  lambda: load_all(shard_copy))
    index_path = shard_copy / "index.json"
    index = json.loads(index_path.read_text())
    index["schema_version"] = 0
    index_path.write_text(json.dumps(index))
    raises_naming(index_path, "shard schema version 0, this hpcfed reads version 1",
                  lambda: ShardedDataset(shard_copy))


def test_index_missing_or_broken(shard_copy, tmp_path):
    (shard_copy / "index.json").write_text("{not json")
    raises_naming(shard_copy / "index.json", "unreadable shard index", lambda: ShardedDataset(shard_copy))
    (shard_copy / "index.json").unlink()
    raises_naming(shard_copy / "index.json", "no index.json \\(not prepared, or unfinished\\)",
                  lambda: ShardedDataset(shard_copy))
    raises_naming(tmp_path / "nowhere", "directory not found", lambda: ShardedDataset(tmp_path / "nowhere"))


def test_unknown_client(prepared):
    with ShardedDataset(prepared) as ds:
        with pytest.raises(DataError, match="no client 3 \\(clients are 0..2\\)"):
            ds.load_client(3)


# ---------------------------------------------------------------------------------------------- atomic write


def test_failed_prepare_leaves_nothing_finished(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "img.zip")
    cfg = image_cfg(tmp_path, tmp_path / "img.zip")
    calls = []

    def boom(self, cid, x, y, lengths):
        calls.append(cid)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(self, cid, x, y, lengths)

    real = shards_mod.ShardWriter.add_client
    monkeypatch.setattr(shards_mod.ShardWriter, "add_client", boom)
    with pytest.raises(OSError, match="simulated"):
        prepare_shards(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.zip"]  # no shards/, no shards.tmp-*

    monkeypatch.setattr(shards_mod.ShardWriter, "add_client", real)
    root = prepare_shards(cfg)
    good = json.loads((root / "index.json").read_text())["prepare_id"]
    calls.clear()
    monkeypatch.setattr(shards_mod.ShardWriter, "add_client", boom)
    with pytest.raises(OSError, match="simulated"):
        prepare_shards(cfg, force=True)  # a failed rebuild keeps the old, complete directory
    assert json.loads((root / "index.json").read_text())["prepare_id"] == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.zip", "shards"]
    load_all(root)


def test_refuses_to_overwrite_foreign_directory(tmp_path):
    write_image_folder(tmp_path / "img.zip")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "notes.txt").write_text("mine")
    cfg = image_cfg(tmp_path, tmp_path / "img.zip")
    raises_naming(tmp_path / "shards", "not a shard directory \\(contains notes.txt\\); refusing to overwrite",
                  lambda: ensure_prepared(cfg))
    assert (tmp_path / "shards" / "notes.txt").read_text() == "mine"
