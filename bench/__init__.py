"""Benchmarks of cityml's feature paths; ``python -m bench.run`` writes ``bench/RESULTS.md``."""
