"""Analyses of trained runs. :mod:`hpcfed.analysis.basin`: loss along the line between two models and its
barrier (linear mode connectivity)."""
