"""Checkpoint files: atomic write, pruning, newest-valid selection, config check, safe loading."""

import pytest
import torch

from hpcfed.checkpoint import (CheckpointError, find_resume_checkpoint, list_checkpoints, load_checkpoint,
                               save_checkpoint)


def _save(d, r, h="abc", keep=3):
    return save_checkpoint(d, r, {"theta_global": torch.full((5,), float(r))}, config_hash=h,
                           history=[{"round": i} for i in range(1, r + 1)], keep_last=keep)


def test_round_trip_and_pruning(tmp_path):
    for r in range(1, 6):
        _save(tmp_path, r)
    files = list_checkpoints(tmp_path)
    assert [p.name for p in files] == ["round-000003.safetensors", "round-000004.safetensors",
                                       "round-000005.safetensors"]
    ck = load_checkpoint(files[-1])
    assert ck.round == 5 and ck.config_hash == "abc" and len(ck.history) == 5
    assert torch.equal(ck.tensors["theta_global"], torch.full((5,), 5.0))
    assert not list(tmp_path.glob("*.tmp-*"))


def test_auto_picks_newest_valid(tmp_path):
    _save(tmp_path, 1)
    p2 = _save(tmp_path, 2)
    p2.write_bytes(p2.read_bytes()[:40])  # truncated newest checkpoint
    ck = find_resume_checkpoint(tmp_path, "auto", config_hash="abc", force=False)
    assert ck.round == 1
    assert find_resume_checkpoint(tmp_path / "none", "auto", config_hash="abc", force=False) is None
    assert find_resume_checkpoint(tmp_path, "none", config_hash="abc", force=False) is None


def test_refuses_other_config_unless_forced(tmp_path):
    _save(tmp_path, 1, h="abc")
    with pytest.raises(CheckpointError, match="different config"):
        find_resume_checkpoint(tmp_path, "auto", config_hash="xyz", force=False)
    assert find_resume_checkpoint(tmp_path, "auto", config_hash="xyz", force=True).round == 1


def test_bad_files_named(tmp_path):
    bad = tmp_path / "round-000007.safetensors"
    bad.write_bytes(b"\x80\x04 not a checkpoint, a pickle")
    with pytest.raises(CheckpointError, match="round-000007.safetensors: unreadable"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        find_resume_checkpoint(tmp_path, str(tmp_path / "missing.safetensors"), config_hash="", force=False)
