"""``python -m benchmarks``: every scenario, a progress bar, a results table (see runner.py)."""

from benchmarks.runner import main

main()
