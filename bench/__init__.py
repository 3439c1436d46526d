"""Benchmarks: figures, not pass/fail. ``python -m bench`` runs every ``bench/<name>.py`` that
exposes ``run(outdir) -> dict`` and writes ``build/bench/<name>.json``."""
