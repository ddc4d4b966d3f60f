"""Flower (``flwr[simulation]`` 1.41) simulation of the workload: Message-API ``ServerApp`` + ``ClientApp``,
``FedAvg`` strategy, Ray simulation backend.

``python -m benchmarks.compare.flower_bench [--workload text-bitfit] [--rounds 5] [--bf16]
[--cpus-per-client N]`` prints one JSON line (see :mod:`benchmarks.compare.common`). Run it with the compare
venv's Python (flwr is not in the main venv).

Idiomatic best setup (Flower's quickstart-pytorch / FlowerTune examples, 1.2x Message API): 100 virtual
SuperNodes (``partition-id`` = hpcfed client id), ``FedAvg(fraction_train=0.16, fraction_evaluate=0)``
weighted by ``num-examples`` (client sample counts, as hpcfed), only the trainable (PEFT + head) tensors travel
in the ``ArrayRecord`` (as FlowerTune does for PEFT), the frozen backbone is built once per Ray worker and
cached (not rebuilt per message), ``client_resources = {num_cpus: --cpus-per-client}`` (default all cores:
one ClientApp at a time with every core; ``--cpus-per-client 1``: one Ray actor per core training clients
concurrently, each with one torch thread). With ``--cohorts hpcfed`` (default) the server first asks every
node for its ``partition-id`` (one QUERY message each, before round 1) and then sends round r's training
messages to the nodes of hpcfed's cohort r, so every framework trains the same clients; ``--cohorts native``
keeps ``FedAvg``'s own random node sampling. Round times run from the end of one ``evaluate_fn`` call to the
next (it is called at round 0 and after every round; test evaluations with ``--eval-every`` happen inside it
and are not counted); round 1 is the warm-up. Every ClientApp reports the local steps it ran and the real
tokens it consumed (``local-steps``, ``tokens`` in its ``MetricRecord``); the strategy's
``train_metrics_aggr_fn`` sums them over the round's replies (``local_steps_per_round``, ``tokens_per_s``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from benchmarks.compare import common

_CACHE: dict = {}


def _worker_state(workload: str, overrides: tuple, threads: int):
    """(cfg, dataset, model) built once per Ray worker process."""
    key = (workload, overrides)
    if key not in _CACHE:
        cfg, ds = common.setup(workload, list(overrides), threads=threads)
        _CACHE[key] = (cfg, ds, common.build_model(cfg, cfg.peft.method))
    return _CACHE[key]


def work_aggregator(result: dict):
    """A ``FedAvg`` ``train_metrics_aggr_fn``: sums the replies' ``local-steps``, ``tokens`` and weighting key
    over the round and appends the round's steps and tokens to ``result["local_steps"]`` / ``result["tokens"]``.
    Imports flwr."""
    from flwr.app import MetricRecord

    def sum_work(contents: list, weighted_by_key: str) -> MetricRecord:
        records = [next(iter(c.metric_records.values())) for c in contents]  # each reply's one MetricRecord
        total = {k: sum(int(m[k]) for m in records) for k in ("local-steps", "tokens", weighted_by_key)}
        result.setdefault("local_steps", []).append(total["local-steps"])
        result.setdefault("tokens", []).append(total["tokens"])
        return MetricRecord(total)

    return sum_work


def make_apps(workload: str, overrides: tuple, rounds: int, bf16: bool, threads: int, cohorts: str,
              eval_every: int, round_s: list, result: dict):
    """The (ServerApp, ClientApp) pair; ``round_s``/``result`` are filled by the server side."""
    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from hpcfed.fl.sampling import client_seed

    client_app = ClientApp()

    @client_app.query()
    def query(msg: Message, context: Context):
        pid = int(context.node_config["partition-id"])
        return Message(content=RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=msg)

    @client_app.train()
    def train(msg: Message, context: Context):
        cfg, ds, model = _worker_state(workload, overrides, threads)
        c = cfg.fl.local
        sd = msg.content["arrays"].to_torch_state_dict()
        model.load_state_dict(sd, strict=False)  # only the trainable tensors travel
        cid = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        data = ds.load_client(cid)
        seed = client_seed(cfg.seed, rnd, cid)
        torch.manual_seed(seed)
        work = common.local_train(model, common.make_optimizer(model, cfg), data, c.steps, c.batch_size,
                                  torch.Generator().manual_seed(seed), bf16=bf16)
        content = RecordDict({"arrays": ArrayRecord(common.trainable_state(model)),
                              "metrics": MetricRecord({"num-examples": len(data), "local-steps": work.steps,
                                                       "tokens": work.tokens})})
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    class CohortFedAvg(FedAvg):
        """FedAvg whose round-r training messages go to the nodes holding hpcfed's cohort r."""

        def __init__(self, node_of_partition: dict[int, int], cohort_iter, **kw):
            super().__init__(**kw)
            self.node_of_partition, self.cohort_iter = node_of_partition, cohort_iter

        def configure_train(self, server_round, arrays, config, grid):
            config["server-round"] = server_round
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            nodes = [self.node_of_partition[c] for c in next(self.cohort_iter)]
            return self._construct_messages(record, nodes, MessageType.TRAIN)

    @server_app.main()
    def main(grid: Grid, context: Context):
        cfg, ds = common.setup(workload, list(overrides), threads=threads)  # the server's own copy, not the
        model = common.build_model(cfg, cfg.peft.method)                     # ClientApps' cache
        n = ds.num_clients
        kw = dict(fraction_train=cfg.fl.cohort_size / n, fraction_evaluate=0.0,
                  min_train_nodes=cfg.fl.cohort_size, min_available_nodes=n,
                  train_metrics_aggr_fn=work_aggregator(result))
        if cohorts == "hpcfed":
            while len(list(grid.get_node_ids())) < n:
                time.sleep(0.1)
            replies = grid.send_and_receive([Message(content=RecordDict({}), message_type=MessageType.QUERY,
                                                     dst_node_id=node) for node in grid.get_node_ids()])
            mapping = {int(r.content["metrics"]["partition-id"]): r.metadata.src_node_id for r in replies}
            strategy = CohortFedAvg(mapping, common.hpcfed_cohorts(cfg, n), **kw)
        else:
            strategy = FedAvg(**kw)
        test = ds.load_test()
        last = [0.0]

        def evaluate_fn(server_round: int, arrays):
            if server_round > 0:
                round_s.append(time.perf_counter() - last[0])
                print(f"round {server_round}: {round_s[-1]:.2f} s", file=sys.stderr)
                if server_round == rounds or (eval_every and server_round % eval_every == 0):
                    model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
                    acc = common.accuracy(model, test)
                    result.setdefault("acc_curve", []).append([server_round, acc])
                    result["final_acc"] = acc
            else:
                result["startup_end"] = time.perf_counter()
            last[0] = time.perf_counter()
            return MetricRecord({})

        strategy.start(grid=grid, initial_arrays=ArrayRecord(common.trainable_state(model)), num_rounds=rounds,
                       train_config=ConfigRecord({}), evaluate_fn=evaluate_fn)

    return server_app, client_app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(p, cohorts=True)
    p.add_argument("--cpus-per-client", type=int, default=None,
                   help="Ray client_resources num_cpus (default: all cores, one client at a time)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ["PYTHONPATH"] = repo + os.pathsep + os.environ.get("PYTHONPATH", "")  # Ray workers import us
    from flwr.simulation import run_simulation

    ncpu = os.cpu_count() or 1
    cpus = a.cpus_per_client or ncpu
    threads = a.threads or cpus
    cfg, ds = common.setup(a.workload, a.overrides, threads=threads)
    round_s: list[float] = []
    result: dict = {}
    # make_apps of the importable module, not of __main__: Ray pickles __main__'s functions by value, with
    # the globals they use (the ClientApps' cache)
    from benchmarks.compare.flower_bench import make_apps

    server_app, client_app = make_apps(a.workload, tuple(a.overrides), a.rounds, a.bf16, threads, a.cohorts,
                                       a.eval_every, round_s, result)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=ds.num_clients,
                   backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": ncpu, "include_dashboard": False}})
    total = time.perf_counter() - t0
    startup = result.get("startup_end", time.perf_counter()) - t0
    label = "flower" + (f"-{ncpu // cpus}w" if cpus < ncpu else "") + ("-bf16" if a.bf16 else "")
    common.report(label, a.workload, round_s, cfg.fl.cohort_size, result.get("final_acc", float("nan")),
                  startup, bf16=a.bf16, processes=ncpu // cpus, local_steps=result.get("local_steps"),
                  tokens=result.get("tokens"), total_s=total,
                  acc_curve=[c for c in result.get("acc_curve", []) if a.eval_every and c[0] % a.eval_every == 0],
                  cohorts=a.cohorts, flwr_version=__import__("flwr").__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
