"""`python -m hpcfed.evaluate`: rebuilds a run's model, loads its weights (final/peft.safetensors or an
export folder) and reports the test accuracy/loss; bad input gives one `error:` line and exit status 2."""

import json

import pytest
import torch

from hpcfed.atomic import atomic_write_text
from hpcfed.config import load_config
from hpcfed.data import ShardedDataset, prepare_shards
from hpcfed.data.synthetic import write_image_folder
from hpcfed.evaluate import cli
from hpcfed.export import export_peft, save_peft
from hpcfed.fl.client import evaluate
from hpcfed.models import build_model
from hpcfed.peft import apply_peft
from tests.unit.test_peft_methods import model_args



@pytest.fixture(scope="module")
def image_words(tmp_path_factory):
    """Config words of a tiny open_clip job on a 3-class ImageFolder (8x8 images; the model resizes to 16)."""
    root = tmp_path_factory.mktemp("toy_img")
    write_image_folder(root / "src", classes=("cat", "dog", "frog"), train_per_class=4, test_per_class=3, size=8)
    words = [f"data.source={root / 'src'}", "data.test_source=null", "data.kind=image", "data.name=toyimg",
             "data.num_clients=2", "data.num_shards=1", "data.partition=iid", f"data.shard_dir={root / 'shards'}",
             "fl.cohort_size=2", "progress=false", f"out_dir={root / 'runs'}", "model.dropout=0.0",
             *model_args("open_clip")]
    prepare_shards(load_config(words).data)
    return words


def _make_run(words, method, name):
    """What hpcfed.main leaves behind (config.yaml, final/peft.safetensors) plus an export; returns
    (run_dir, export_dir, expected [loss, accuracy])."""
    cfg = load_config(words + [f"peft.method={method}", f"name={name}"])
    with ShardedDataset(cfg.data.resolved_shard_dir()) as ds:
        test = ds.load_test()
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, ds.num_classes, class_names=ds.class_names)
        flat = apply_peft(model, cfg.peft)
    with torch.no_grad():
        flat.data.add_(0.05 * torch.randn(flat.data.shape, generator=torch.Generator().manual_seed(3)))
    run_dir = cfg.run_dir
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    save_peft(run_dir / "final" / "peft.safetensors", flat, flat.data, peft_method=method)
    export = export_peft(model, flat, flat.data, run_dir / "final" / "export", cfg)
    sums = evaluate(model, test, torch.device("cpu"))
    return run_dir, export, (float(sums[0] / sums[2]), float(sums[1] / sums[2]))


def _run(capsys, *argv):
    code = cli(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_evaluate_run_and_export(image_words, capsys, method):
    run_dir, export, (loss, acc) = _make_run(image_words, method, f"run_{method}")
    for extra in ([], [f"export={export}"]):
        code, out, err = _run(capsys, f"run_dir={run_dir}", "dist.device=cpu", *extra)
        assert code == 0, err
        got = json.loads(out)
        assert got["num_examples"] == 9 and got["method"] == method
        assert got["accuracy"] == pytest.approx(acc) and got["loss"] == pytest.approx(loss, rel=1e-5)


def test_evaluate_errors(image_words, capsys, tmp_path):
    run_dir, export, _ = _make_run(image_words, "adapter", "run_err")
    cases = [
        ([], "run_dir=<runs/NAME> is required"),
        ([f"run_dir={tmp_path / 'nope'}"], "no such folder"),
        ([f"run_dir={tmp_path}"], "no config.yaml"),
        ([f"run_dir={run_dir}", f"export={tmp_path / 'missing'}"], "no such folder"),
        ([f"run_dir={run_dir}", f"export={tmp_path}"], "export.json"),
        ([f"run_dir={run_dir}", "peft.method=lora", f"export={export}"], "does not fit"),
        ([f"run_dir={run_dir}", "peft.adapter_reduction_factor=8", f"export={export}"], "has shape"),
        ([f"run_dir={run_dir}", "peft.method=bias"], "missing"),
        ([f"run_dir={run_dir}", "peft.method=zipf"], "peft.method='zipf' is not valid"),
    ]
    for argv, message in cases:
        code, out, err = _run(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert message in err, (argv, err)
        assert out == ""
