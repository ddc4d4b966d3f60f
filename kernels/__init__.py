"""Fused elementwise kernels over the flat fp32 PEFT buffer (``hpcfed.kernels``).

The source lives in the top-level ``kernels/`` folder of the repository but is installed only as
``hpcfed.kernels`` (``package-dir`` mapping in pyproject.toml): a top-level ``kernels`` package would shadow
Hugging Face's ``kernels`` package, which ``transformers`` probes for by name. Always import it as
``hpcfed.kernels``. (This module deliberately defines no ``__version__``.)

Kernels (each: Triton kernel, pure-torch ``*_ref`` with the same arguments, and this dispatcher):

* :func:`masked_accumulate` -- ``acc += w * m * (theta_client - theta_global)``, ``cnt += w * m``
* :func:`server_update`     -- FedAvg / FedAvgM / FedAdam / FedYogi server step from ``(acc, cnt)``
* :func:`masked_adamw_step` -- client AdamW step (torch.optim.AdamW math) on masked entries
* :func:`masked_sgd_step`   -- client SGD (+momentum, Nesterov) step (torch.optim.SGD math) on masked entries

Dispatch: Triton for CUDA tensors, the torch reference for CPU tensors; force either with
``backend='triton' | 'torch'`` or ``HPCFED_KERNEL_BACKEND`` (see :func:`resolve_backend`). Every dispatcher
call increments :data:`dispatch_counts` ``[kernel name]`` and :data:`backend_counts` ``[(name, backend)]``.
See docs/kernels.md for formulas, block sizes and benchmarks.
"""

if __name__ != "hpcfed.kernels":
    # Imported under another name, i.e. as the top-level ``kernels`` because the repository root is on sys.path
    # (e.g. ``python -m ...`` run from the root, where ``transformers.utils.is_kernels_available()`` imports
    # whatever ``kernels`` it finds). Define nothing: no second copy of the kernels and their counters, and
    # nothing that could pass for Hugging Face's ``kernels`` (no ``__version__``, no ``get_kernel``).
    __all__: list[str] = []
else:
    from ._backend import (
        BACKENDS,
        ENV_VAR,
        HAS_TRITON,
        backend_counts,
        dispatch_counts,
        interpreter_enabled,
        resolve_backend,
    )
    from .accumulate import masked_accumulate, masked_accumulate_ref
    from .adamw import masked_adamw_step, masked_adamw_step_ref
    from .sgd import masked_sgd_step, masked_sgd_step_ref
    from .server import OPTIMIZERS as SERVER_OPTIMIZERS
    from .server import init_server_state, server_update, server_update_ref

    __all__ = [
        "BACKENDS",
        "ENV_VAR",
        "HAS_TRITON",
        "SERVER_OPTIMIZERS",
        "backend_counts",
        "dispatch_counts",
        "init_server_state",
        "interpreter_enabled",
        "masked_accumulate",
        "masked_accumulate_ref",
        "masked_adamw_step",
        "masked_adamw_step_ref",
        "masked_sgd_step",
        "masked_sgd_step_ref",
        "resolve_backend",
        "server_update",
        "server_update_ref",
    ]
