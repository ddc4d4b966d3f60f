"""Backend resolution, the HPCFED_KERNEL_BACKEND switch, dispatch counters, argument checks, missing Triton."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hpcfed import kernels as K


def _acc_args(n=8, device="cpu"):
    return (torch.zeros(n, device=device), torch.zeros(n, device=device), torch.ones(n, device=device),
            torch.zeros(n, device=device), 1.0)


def test_auto_uses_torch_for_cpu_tensors_even_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    t = torch.zeros(3)
    assert K.resolve_backend(t, None) == "torch"
    assert K.resolve_backend(t, "auto") == "torch"
    assert K.resolve_backend(t, "torch") == "torch"
    before = dict(K.backend_counts)
    K.masked_accumulate(*_acc_args())
    assert K.backend_counts[("masked_accumulate", "torch")] == before.get(("masked_accumulate", "torch"), 0) + 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_uses_triton_for_cuda_tensors():
    assert K.resolve_backend(torch.zeros(3, device="cuda"), None) == ("triton" if K.HAS_TRITON else "torch")


def test_triton_forced_on_cpu_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert K.resolve_backend(torch.zeros(3), "triton") == "triton"
    assert K.resolve_backend(torch.zeros(3), " Triton ") == "triton"


def test_triton_forced_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        K.resolve_backend(torch.zeros(3), "triton")
    before = K.dispatch_counts["masked_accumulate"]
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        K.masked_accumulate(*_acc_args(), backend="triton")
    assert K.dispatch_counts["masked_accumulate"] == before  # nothing dispatched


def test_environment_variable_switch_and_precedence(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    t = torch.zeros(3)
    monkeypatch.setenv(K.ENV_VAR, "triton")
    assert K.resolve_backend(t, None) == "triton"
    assert K.resolve_backend(t, "torch") == "torch"  # the keyword wins over the environment
    monkeypatch.setenv(K.ENV_VAR, "torch")
    assert K.resolve_backend(t, None) == "torch"
    monkeypatch.setenv(K.ENV_VAR, "")
    assert K.resolve_backend(t, None) == "torch"  # empty = auto
    monkeypatch.setenv(K.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=K.ENV_VAR):
        K.resolve_backend(t, None)
    with pytest.raises(ValueError, match="backend argument"):
        K.resolve_backend(t, "numba")


def test_environment_variable_reaches_every_dispatcher(monkeypatch):
    """With HPCFED_KERNEL_BACKEND=triton each public kernel dispatches to (interpreted) Triton on CPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(K.ENV_VAR, "triton")
    if not K.HAS_TRITON:
        pytest.skip("triton is not importable")
    n = 5
    before = K.backend_counts.copy()
    total = K.dispatch_counts.copy()
    K.masked_accumulate(*_acc_args(n))
    K.server_update(torch.zeros(n), torch.ones(n), torch.ones(n), K.init_server_state("adam", n, "cpu"),
                    optimizer="adam", lr=0.1, step=1)
    K.masked_adamw_step(torch.zeros(n), torch.ones(n), torch.zeros(n), torch.zeros(n), lr=0.1, beta1=0.9,
                        beta2=0.99, eps=1e-8, weight_decay=0.0, step=1)
    K.masked_sgd_step(torch.zeros(n), torch.ones(n), None, lr=0.1)
    for name in ("masked_accumulate", "server_update", "masked_adamw_step", "masked_sgd_step"):
        assert K.backend_counts[(name, "triton")] == before[(name, "triton")] + 1, name
        assert K.dispatch_counts[name] == total[name] + 1, name


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_buffers(backend, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if backend == "triton" and not K.HAS_TRITON:
        pytest.skip("triton is not importable")
    e = torch.zeros(0)
    K.masked_accumulate(e, e.clone(), e.clone(), e.clone(), 1.0, backend=backend)
    K.server_update(e, e.clone(), e.clone(), K.init_server_state("yogi", 0, "cpu"), optimizer="yogi", lr=1.0,
                    step=1, backend=backend)
    K.masked_adamw_step(e, e.clone(), e.clone(), e.clone(), lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                        weight_decay=0.0, step=1, backend=backend)
    K.masked_sgd_step(e, e.clone(), e.clone(), lr=0.1, momentum=0.9, backend=backend)


def test_argument_checks():
    acc, cnt, tc, tg, w = _acc_args(8)
    with pytest.raises(ValueError, match="shape"):
        K.masked_accumulate(acc, cnt, torch.zeros(7), tg, w)
    with pytest.raises(ValueError, match="contiguous"):
        K.masked_accumulate(acc, cnt, torch.zeros(16)[::2], tg, w)
    with pytest.raises(TypeError, match="mask"):
        K.masked_accumulate(acc, cnt, tc, tg, w, torch.zeros(8, dtype=torch.int32))
    with pytest.raises(TypeError, match="dtype"):
        K.masked_accumulate(acc.half(), cnt, tc, tg, w)
    if K.HAS_TRITON:  # the Triton path is fp32-only, fp64 is reference-only
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        a64 = [t.double().to(dev) for t in (acc, cnt, tc, tg)]
        with pytest.raises(TypeError, match="fp32"):
            K.masked_accumulate(*a64, w, backend="triton")
        K.masked_accumulate(*a64, w, backend="torch")
        assert a64[0].tolist() == [1.0] * 8
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            K.masked_accumulate(acc.cuda(), cnt, tc, tg, w)


def test_triton_missing_falls_back_to_torch(tmp_path):
    """Without an importable triton: import works, 'auto' uses torch, forcing 'triton' says what is wrong."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        from hpcfed import kernels as K
        assert not K.HAS_TRITON
        assert K.resolve_backend(torch.zeros(2), None) == "torch"
        acc = torch.zeros(4)
        cnt = torch.zeros(4)
        K.masked_accumulate(acc, cnt, torch.ones(4), torch.zeros(4), 2.0)
        assert acc.tolist() == [2.0] * 4 and cnt.tolist() == [2.0] * 4
        assert K.backend_counts[("masked_accumulate", "torch")] == 1
        for call in (lambda: K.resolve_backend(torch.zeros(2), "triton"),
                     lambda: K.masked_accumulate(acc, cnt, acc, acc, 1.0, backend="triton")):
            try:
                call()
            except RuntimeError as exc:
                assert "Triton could not be imported" in str(exc), exc
            else:
                raise AssertionError("backend='triton' without triton did not raise")
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in (K.ENV_VAR,)}
    env["TRITON_INTERPRET"] = "1"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]


@pytest.mark.parametrize("mask_kind", ["none", "random"])
def test_cpu_torch_path_in_slices_equals_whole_buffer_reference(mask_kind):
    """On CPU the torch backend runs the reference on TORCH_CHUNK-element slices: same results as one call."""
    from hpcfed.kernels import _backend

    n = 2 * _backend.TORCH_CHUNK + 7
    gen = torch.Generator().manual_seed(0)

    def r(scale=1.0):
        return torch.randn(n, generator=gen) * scale

    mask = None if mask_kind == "none" else torch.rand(n, generator=gen) < 0.5
    lr_scale = torch.rand(n, generator=gen) + 0.5
    cases = {
        "masked_accumulate": (lambda t, f: f(t["a"], t["b"], t["c"], t["d"], 1.5, mask), (K.masked_accumulate_ref,
                              K.masked_accumulate), dict(a=r(), b=r().abs(), c=r(), d=r())),
        "server_update": (lambda t, f: f(t["a"], t["b"], t["c"].abs().round(), {"m": t["m"], "v": t["v"]},
                                         optimizer="yogi", lr=0.1, step=3, mask=mask),
                          (K.server_update_ref, K.server_update), dict(a=r(), b=r(), c=r(2), m=r(0.1), v=r(0.1).abs())),
        "masked_adamw_step": (lambda t, f: f(t["a"], t["b"], t["m"], t["v"], lr=1e-2, beta1=0.9, beta2=0.99,
                                             eps=1e-8, weight_decay=0.1, step=2, mask=mask, lr_scale=lr_scale),
                              (K.masked_adamw_step_ref, K.masked_adamw_step), dict(a=r(), b=r(), m=r(0.1),
                                                                                    v=r(0.1).abs())),
        "masked_sgd_step": (lambda t, f: f(t["a"], t["b"], t["m"], lr=1e-2, momentum=0.9, nesterov=True,
                                           weight_decay=0.1, step=2, mask=mask, lr_scale=lr_scale),
                            (K.masked_sgd_step_ref, K.masked_sgd_step), dict(a=r(), b=r(), m=r(0.1))),
    }
    for name, (call, (ref, dispatch), tensors) in cases.items():
        whole = {k: v.clone() for k, v in tensors.items()}
        sliced = {k: v.clone() for k, v in tensors.items()}
        call(whole, ref)
        call(sliced, functools.partial(dispatch, backend="torch"))
        for k in tensors:
            # same math; not asserted bitwise: thread splits may put other elements in scalar (non-SIMD) tails
            torch.testing.assert_close(sliced[k], whole[k], rtol=1e-6, atol=1e-7, msg=f"{name}: {k}")
        assert not torch.equal(whole["a"], tensors["a"]), name
