"""Side-by-side comparison of hpcfed with pfl-research, Flower and a plain PyTorch loop (docs/benchmarks.md)."""
