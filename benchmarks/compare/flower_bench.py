"""Flower (``flwr[simulation]`` 1.41) simulation of the workload: Message-API ``ServerApp`` + ``ClientApp``,
``FedAvg`` strategy, Ray simulation backend.

``python -m benchmarks.compare.flower_bench [--workload text-bitfit] [--rounds 5] [--bf16]`` prints one JSON
line (see :mod:`benchmarks.compare.common`). Run it with the compare venv's Python (flwr is not in the main
venv).

Idiomatic best setup (Flower's quickstart-pytorch / FlowerTune examples, 1.2x Message API): 100 virtual
SuperNodes (``partition-id`` = hpcfed client id), ``FedAvg(fraction_train=0.16, fraction_evaluate=0)``
weighted by ``num-examples`` (client sample counts, as hpcfed), only the trainable (PEFT + head) tensors travel
in the ``ArrayRecord`` (as FlowerTune does for PEFT), the frozen backbone is built once per Ray worker and
cached (not rebuilt per message), ``client_resources = {num_cpus: all cores}`` so one ClientApp trains at a
time with every core (on 2 cores two concurrent clients of 1 thread each are not faster). Round times are the
intervals between the strategy's ``evaluate_fn`` calls (it is called at round 0 and after every round);
round 1 is the warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from benchmarks.compare import common

_CACHE: dict = {}


def _worker_state(workload: str, overrides: tuple, bf16: bool):
    """(cfg, dataset, model) built once per Ray worker process."""
    key = (workload, overrides)
    if key not in _CACHE:
        torch.set_num_threads(os.cpu_count() or 1)
        cfg, ds = common.setup(workload, list(overrides))
        _CACHE[key] = (cfg, ds, common.build_model(cfg, cfg.peft.method))
    return _CACHE[key]


def make_apps(workload: str, overrides: tuple, rounds: int, bf16: bool, stamps: list, result: dict):
    """The (ServerApp, ClientApp) pair; ``stamps``/``result`` are filled by the server side."""
    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from hpcfed.fl.sampling import client_seed

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context):
        cfg, ds, model = _worker_state(workload, overrides, bf16)
        c = cfg.fl.local
        sd = msg.content["arrays"].to_torch_state_dict()
        model.load_state_dict(sd, strict=False)  # only the trainable tensors travel
        cid = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        data = ds.load_client(cid)
        seed = client_seed(cfg.seed, rnd, cid)
        torch.manual_seed(seed)
        common.local_train(model, common.make_optimizer(model, cfg), data, c.steps, c.batch_size,
                           torch.Generator().manual_seed(seed), bf16=bf16)
        content = RecordDict({"arrays": ArrayRecord(common.trainable_state(model)),
                              "metrics": MetricRecord({"num-examples": len(data)})})
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context):
        cfg, ds, model = _worker_state(workload, overrides, bf16)
        n = ds.num_clients
        strategy = FedAvg(fraction_train=cfg.fl.cohort_size / n, fraction_evaluate=0.0,
                          min_train_nodes=cfg.fl.cohort_size, min_available_nodes=n)

        def evaluate_fn(server_round: int, arrays):
            stamps.append(time.perf_counter())
            if server_round > 0:
                print(f"round {server_round}: {stamps[-1] - stamps[-2]:.2f} s", file=sys.stderr)
            if server_round == rounds:
                model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
                result["final_acc"] = common.accuracy(model, ds.load_test())
            return MetricRecord({})

        strategy.start(grid=grid, initial_arrays=ArrayRecord(common.trainable_state(model)), num_rounds=rounds,
                       train_config=ConfigRecord({}), evaluate_fn=evaluate_fn)

    return server_app, client_app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="text-bitfit", choices=["text-bitfit", "text-lora"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in the ClientApp's training")
    common.add_set_arg(p)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ["PYTHONPATH"] = repo + os.pathsep + os.environ.get("PYTHONPATH", "")  # Ray workers import us
    from flwr.simulation import run_simulation

    cfg, ds = common.setup(a.workload, a.overrides)
    stamps: list[float] = []
    result: dict = {}
    server_app, client_app = make_apps(a.workload, tuple(a.overrides), a.rounds, a.bf16, stamps, result)
    ncpu = os.cpu_count() or 1
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=ds.num_clients,
                   backend_config={"client_resources": {"num_cpus": ncpu, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": ncpu, "include_dashboard": False}})
    total = time.perf_counter() - t0
    round_s = [b - x for x, b in zip(stamps, stamps[1:])]
    startup = (stamps[0] - t0) if stamps else total
    common.report("flower" + ("-bf16" if a.bf16 else ""), a.workload, round_s, cfg.fl.cohort_size,
                  result.get("final_acc", float("nan")), startup, total_s=total,
                  flwr_version=__import__("flwr").__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
