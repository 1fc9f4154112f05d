"""Benchmarks: our training/evaluation path timed side by side with an official-style reference
(``benchmarks/reference.py``). See ``benchmarks/README.md``."""
