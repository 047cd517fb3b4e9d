"""Benchmarks of mlaas4hep against raw uproot, the original per-event algorithm and in-memory arrays.

``make bench`` runs them (``benchmarks/run.py``).
"""
