"""promptstate's benchmarks: each ``bench_*.py`` runs on its own (``python -m benchmarks.X``)."""
