"""resgraph's benchmark runner (`python -m bench`); see bench/run.py and docs/benchmarks.md."""
