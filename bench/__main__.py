"""Run every benchmark module (or those named on the command line) and print their tables."""
from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

import bench

OUT = Path(__file__).resolve().parent.parent / "build" / "bench"


def main(argv: list[str]) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    # a benchmark module has run(outdir); helper modules (bench/signal_*.py) have no run
    names = argv or sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))
    failed = []
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        if not hasattr(mod, "run"):
            continue
        t0 = time.monotonic()
        print(f"== bench {name}", flush=True)
        try:
            figures = mod.run(OUT)
        except Exception as e:  # a broken benchmark is reported, the others still run
            print(f"   FAILED: {type(e).__name__}: {e}")
            failed.append(name)
            continue
        (OUT / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        width = max((len(k) for k in figures), default=0)
        for k, v in figures.items():
            print(f"   {k:<{width}}  {v}")
        print(f"   -> build/bench/{name}.json ({time.monotonic() - t0:.1f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
