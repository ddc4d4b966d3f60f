"""Federated methods from the literature, one file each, on top of the engine (:mod:`hpcfed.fl`).

Each module holds one method's maths (a subclass of :class:`hpcfed.fl.algorithm.Algorithm`) and its frozen
parameter dataclass, and registers it by name. Importing this package registers the built-in methods:

=============  =========================================================================================
``fedavg``     FedAvg (McMahan et al., AISTATS 2017) — :mod:`hpcfed.algorithms.fedavg`
``fedprox``    FedProx (Li et al., MLSys 2020) — :mod:`hpcfed.algorithms.fedprox`
``feddat``     FedDAT (Chen et al., AAAI 2024) — :mod:`hpcfed.algorithms.feddat`
``fedyolo``    FedYolo (Zhang et al., 2023) — :mod:`hpcfed.algorithms.fedyolo`
``fedpft``     FedPFT (Peng et al., IJCAI 2024) — :mod:`hpcfed.algorithms.fedpft`
``fedsimsiam`` federated SimSiam pre-training — :mod:`hpcfed.algorithms.fedsimsiam`
=============  =========================================================================================
"""

from hpcfed.algorithms import fedavg, feddat, fedpft, fedprox, fedsimsiam, fedyolo  # noqa: F401 (registers)
from hpcfed.algorithms.registry import ALGORITHMS, get_algorithm, register, validate_algorithm

__all__ = ["ALGORITHMS", "get_algorithm", "register", "validate_algorithm"]
