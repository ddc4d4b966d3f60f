"""hpcfed: federated parameter-efficient fine-tuning of pre-trained transformers, simulated on HPC clusters.

Entry points: ``python -m hpcfed.main`` (a run), ``python -m hpcfed.data.prepare`` (client shards),
``python -m hpcfed.study`` (grids), ``python -m hpcfed.evaluate``, ``python -m hpcfed.pretrain``,
``python -m hpcfed.analysis.basin``. See README.md and ../shared/DESIGN.md.
"""

__version__ = "0.1.0"
