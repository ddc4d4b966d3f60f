"""benchmarks.local_step's profile summary: self CPU time by op category adds up and lands in the right bins."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.local_step import profile_categories


def test_profile_categories_sum_and_bins():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(32, 64)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3, foreach=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            opt.zero_grad()
            y = torch.nn.functional.dropout(torch.nn.functional.gelu(lin(x)), 0.1)
            a = torch.softmax(y @ y.T, dim=-1)
            a.sum().backward()
            opt.step()
    s = profile_categories(prof.key_averages())
    cats = s["categories"]
    assert set(cats) == {"dropout RNG", "attention", "gemm", "casts/copies", "optimizer", "element-wise", "other"}
    assert sum(v["share"] for v in cats.values()) == pytest.approx(1.0)
    assert sum(v["ms"] for v in cats.values()) == pytest.approx(s["total_ms"])
    assert cats["gemm"]["ms"] > 0 and cats["attention"]["ms"] > 0 and cats["optimizer"]["ms"] > 0
    assert cats["element-wise"]["ms"] > 0 and cats["dropout RNG"]["ms"] > 0
    assert sum(o["ms"] for o in s["ops"]) == pytest.approx(s["total_ms"])
    assert len(s["top"]) == 10 and s["top"][0]["ms"] >= s["top"][-1]["ms"]


def test_profile_categories_empty():
    s = profile_categories([])
    assert s["total_ms"] == 0 and all(v["share"] == 0 for v in s["categories"].values())


def test_write_profile_writes_the_table_and_returns_the_categories(tmp_path):
    from benchmarks.local_step import write_profile

    lin = torch.nn.Linear(32, 32)
    s = write_profile(str(tmp_path / "p"), lambda: lin(torch.randn(8, 32)).sum().backward(), "a title")
    text = (tmp_path / "p.txt").read_text()
    assert text.startswith("a title\n") and "aten::addmm" in text
    assert s["categories"]["gemm"]["ms"] > 0
