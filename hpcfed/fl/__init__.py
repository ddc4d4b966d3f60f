"""Federated learning in terms of flat buffers, masks and weights: local training (``client``), algorithms
(``fedavg``, ``fedprox``), aggregation (``aggregate``), server optimizers (``server``), the round loop
(``loop``) and the baselines (``baselines``). Nothing here knows ranks: the loop is handed a ``Comm``."""
