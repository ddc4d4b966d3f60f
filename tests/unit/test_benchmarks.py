"""Pure functions of the benchmark harness (benchmarks/): MFU and token arithmetic, the FLOP model, the
all-reduce cost model and its fit, the bytes table. No timings are asserted."""

import math

import pytest
import torch

from benchmarks.scaling import (
    bytes_table,
    fit_alpha_beta,
    fit_client_time,
    ring_allreduce_s,
    round_time_s,
    trainable_count,
)
from benchmarks.throughput import (
    fit_seq_flops,
    flop_counter,
    matmul_flops,
    gemm_fraction,
    measure_seq_flops,
    seq_flops,
    token_counts,
)
from benchmarks.workloads import WORKLOADS, load_workload_config
from tests.conftest import tiny_model_args


def test_gemm_fraction_and_matmul_flops():
    assert matmul_flops(2) == 16  # 2·n³
    assert matmul_flops(2, 3, 4) == 48
    assert gemm_fraction(1e12, 2.0, 1e12) == 0.5  # 1 TFLOP in 2 s against a 1 TFLOP/s rate
    assert gemm_fraction(3e9, 0.5, 12e9) == 0.5
    with pytest.raises(ValueError):
        gemm_fraction(1.0, 0.0, 1.0)


def test_token_counts_buckets_by_hand():
    lengths = torch.tensor([5, 1, 3, 2, 7, 7])
    batches = [torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5])]
    # buckets=2: batch 1 sorted [1,2,3,5] -> [1,2] padded to 2 (4 tokens), [3,5] padded to 5 (10 tokens);
    # batch 2: [7],[7] -> 14. Real: 11 + 14.
    assert token_counts(lengths, batches, 2) == (6, 25, 28)
    # one bucket: whole batch padded to its longest: 4·5 + 2·7
    assert token_counts(lengths, batches, 1) == (6, 25, 34)
    assert token_counts(None, batches, 4) == (6, 0, 0)
    # packing, capacity = longest: batch 1 [5], [3+2+1=6 > 5 → 3+2], [1] → 3 rows × 5; batch 2: 2 rows × 7
    assert token_counts(lengths, batches, 2, packing=True) == (6, 25, 15 + 14)


def test_fit_seq_flops_recovers_quadratic():
    c, a, b = 100.0, 3000.0, 40.0
    ls = [8, 16, 32]
    coef = fit_seq_flops(ls, [c + a * L + b * L * L for L in ls])
    assert coef == pytest.approx((c, a, b), rel=1e-9)
    assert seq_flops(coef, torch.tensor([1, 2])) == pytest.approx(2 * c + 3 * a + 5 * b)


def test_measured_flops_model_is_exact_on_tiny_bert():
    """c + a·L + b·L² fitted on L = 8, 16, 32 predicts the FLOPs autograd executes at L = 24 exactly, and its
    quadratic term is attention's: per layer 4·L²·d forward (QKᵀ, AV) + 10·L²·d backward (the four gradient
    matmuls and the recomputed QKᵀ of a fused flash-attention backward, as torch's SDPA formula counts it)."""
    from hpcfed.config import load_config
    from hpcfed.models import build_model
    from hpcfed.peft import apply_peft

    cfg = load_config(tiny_model_args("hf_text") + ["peft.method=bias"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    apply_peft(model, cfg.peft)
    coef = measure_seq_flops(model, torch.device("cpu"), kind="text")
    model.eval()
    x = torch.arange(24, dtype=torch.int32)[None] % 90 + 5
    with flop_counter() as fc:
        model(x, torch.tensor([24], dtype=torch.int32)).float().sum().backward()
    assert seq_flops(coef, torch.tensor([24])) == pytest.approx(fc.get_total_flops(), rel=1e-6)
    d, layers = cfg.model.hidden_size, cfg.model.num_layers
    assert coef[2] == pytest.approx(14 * d * layers, rel=1e-6)  # attention is quadratic in L


def test_ring_allreduce_model():
    assert ring_allreduce_s(1e6, 1, 1e-5, 1e-9) == 0.0
    # p=4: 6 steps of latency, 2·3/4 of the bytes
    assert ring_allreduce_s(4e6, 4, 1e-5, 1e-9) == pytest.approx(6e-5 + 1.5 * 4e6 * 1e-9)
    assert round_time_s(2, 16, 0.5, 0.0, 0.0, 0.0) == 4.0  # 8 clients on the slowest rank
    assert round_time_s(3, 16, 0.5, 0.0, 0.0, 0.0, t_fixed=1.0) == 4.0  # ceil(16/3) = 6


@pytest.mark.parametrize("p", [2, 8])
def test_fit_alpha_beta_recovers_synthetic(p):
    alpha, beta = 3e-5, 2.5e-10
    sizes = [4e2, 4e4, 4e5, 4e6, 4e7]
    secs = [ring_allreduce_s(b, p, alpha, beta) for b in sizes]
    a, b = fit_alpha_beta(sizes, secs, p)
    assert a == pytest.approx(alpha, rel=1e-6)
    assert b == pytest.approx(beta, rel=1e-6)
    with pytest.raises(ValueError):
        fit_alpha_beta(sizes, secs, 1)


def test_fit_client_time_recovers_synthetic():
    rows = [{"ranks": 1, "cohort": 16, "round_s": 0.3 + 16 * 1.25},
            {"ranks": 2, "cohort": 16, "round_s": 0.3 + 8 * 1.25 + 0.01, "allreduce_s": 0.01},
            {"ranks": 1, "cohort": 8, "round_s": 0.3 + 8 * 1.25}]
    t_fixed, t_client = fit_client_time(rows)
    assert t_fixed == pytest.approx(0.3, abs=1e-9)
    assert t_client == pytest.approx(1.25, rel=1e-9)


def test_bytes_table_tiny_bert_by_hand():
    """Tiny BERT (hidden 32, 2 layers, MLP 64, vocab 100, 2 classes): BitFit = embedding LayerNorm bias 32 +
    per layer (q,k,v 96 + attn out 32 + LN 32 + MLP in 64 + MLP out 32 + LN 32 = 288) × 2 + head 2·32+2."""
    from hpcfed.config import load_config
    from hpcfed.models import build_model

    cfg = load_config(tiny_model_args("hf_text"))

    def builder(arch, k):
        return build_model(cfg.model, k)

    rows = bytes_table(["tiny"], ["bias", "head", "full"], builder=builder, num_classes={"tiny": 2})
    got = {r["method"]: r for r in rows}
    assert got["bias"]["trainable"] == 32 + 2 * 288 + 66
    assert got["bias"]["bytes"] == 4 * (32 + 2 * 288 + 66)
    assert got["head"]["trainable"] == 66
    assert got["full"]["trainable"] == got["full"]["total_params"]
    torch.manual_seed(0)
    assert trainable_count(builder("tiny", 2), "lora", lora_rank=2) == 2 * 2 * (2 * 32 + 2 * 32) + 66


def test_workloads_are_valid_configs():
    for name, w in WORKLOADS.items():
        cfg = load_workload_config(name, ["model.path=null", "model.pretrained=false"], rounds=3)
        assert cfg.fl.cohort_size == 16 and cfg.fl.local.steps == 4 and cfg.fl.local.batch_size == 32
        assert cfg.data.num_clients == 100 and cfg.data.alpha == 0.5 and cfg.fl.rounds == 3
        assert cfg.peft.method == w.peft
    assert math.isclose(load_workload_config("text-bitfit", ["model.path=null", "model.pretrained=false"])
                        .fl.local.head_lr, 5e-3)


def test_targets_verdicts_from_results():
    from benchmarks.compare.run_all import targets

    def row(label, ups, **kw):
        return {"label": label, "workload": "text-bitfit", "client_updates_per_s": ups, "final_acc": 0.8,
                "rounds": 5, **kw}

    text = targets([row("hpcfed", 3.0, mfu_bf16=0.2, mfu_fp32=0.8, peak_bf16_flops=3e11, overhead_s=0.1,
                        overhead_frac=0.04),
                    row("hpcfed-G8", 4.0), row("pfl-research", 1.0), row("flower", 2.0)])
    assert "hpcfed-G8 / pfl-research = 4.00× **met**" in text  # best hpcfed row against each framework
    assert "hpcfed-G8 / flower = 2.00× **missed**" in text
    assert "20.0% of the bf16 GEMM rate measured in the same run (300 GFLOP/s) **missed**" in text
    assert "4.0% of the round **met**" in text


def test_targets_compare_each_frameworks_fastest_setup():
    """A framework's multi-process row counts when it is its fastest; hpcfed-fp32 never is hpcfed's best."""
    from benchmarks.compare.run_all import family, targets

    def row(label, ups, acc=0.8):
        return {"label": label, "workload": "text-lora", "client_updates_per_s": ups, "final_acc": acc, "rounds": 30}

    assert family("hpcfed-2r-G8") == "hpcfed" and family("pfl-research-2p") == "pfl-research"
    text = targets([row("hpcfed", 2.0), row("hpcfed-fp32", 9.0), row("hpcfed-2r", 3.0, 0.85),
                    row("pfl-research", 0.5), row("pfl-research-2p", 1.5, 0.84), row("flower", 0.6),
                    row("flower-2w", 0.75)])
    assert "hpcfed-2r / pfl-research-2p = 2.00× **missed**" in text
    assert "accuracy difference (hpcfed-2r − pfl-research-2p) +1.00 points after 30 rounds" in text
    assert "hpcfed-2r / flower-2w = 4.00× **met**" in text
    curves = [dict(row("hpcfed-2r", 3.0), acc_curve=[[10, 0.80], [20, 0.85]]),
              dict(row("flower", 1.0), acc_curve=[[10, 0.79], [20, 0.88]])]
    assert "mean difference over rounds 10, 20: -1.00 points (max |·| 3.00)" in targets(curves)


def _scaling_rows(alpha=2e-4, beta=8e-10, t_fixed=1.5, t_client=0.2, nbytes=106_000):
    """Synthetic `benchmarks.scaling --run` rows: gloo all-reduce on 2 ranks and three rounds."""
    rows = [{"mode": "allreduce", "ranks": 2, "cohort": 0, "bytes": b, "round_s": ring_allreduce_s(b, 2, alpha, beta),
             "client_updates_per_s": 0.0} for b in (400, 40_000, 400_000, 4_000_000, 40_000_000)]
    for mode, p, c in (("strong", 1, 16), ("strong", 2, 16), ("weak", 1, 8)):
        s = round_time_s(p, c, t_client, nbytes, alpha, beta, t_fixed)
        rows.append({"mode": mode, "ranks": p, "cohort": c, "bytes": nbytes, "round_s": s,
                     "client_updates_per_s": c / s, "workload": "text-bitfit"})
    return rows


def test_projection_uses_only_measured_inputs_by_default():
    from benchmarks.scaling import fit_and_plot, projection_markdown

    rows = _scaling_rows()
    fit = fit_and_plot(rows, None)
    assert fit["proj_alpha_s"] == pytest.approx(2e-4, rel=1e-6)
    assert fit["proj_beta_s_per_byte"] == pytest.approx(8e-10, rel=1e-6)
    assert fit["projection_client_s"] == pytest.approx(0.2, rel=1e-6)
    assert "measured here" in fit["projection_basis"] and "fitted to the measured rounds" in fit["projection_basis"]
    md = projection_markdown(fit, [{"arch": "x", "method": "bias", "bytes": 4e5}], None)
    # 8 ranks, 16 clients each: t_client·16 + ring all-reduce with the fitted α, β
    t8 = 16 * 0.2 + ring_allreduce_s(4e5, 8, 2e-4, 8e-10)
    assert f"{t8:.3g} (" in md and "measured here" in md
    given = fit_and_plot(rows, None, collective="nccl", nccl_alpha_us=20, nccl_busbw_gbs=20, gpu_client_s=0.05)
    assert given["proj_alpha_s"] == pytest.approx(2e-5) and given["proj_beta_s_per_byte"] == pytest.approx(5e-11)
    assert given["projection_client_s"] == 0.05 and "not measured here" in given["projection_basis"]
    with pytest.raises(ValueError, match="all-reduce rows"):
        fit_and_plot([r for r in rows if r["mode"] != "allreduce"], None)
    with pytest.raises(ValueError, match="collective"):
        fit_and_plot(rows, None, collective="gloo")
