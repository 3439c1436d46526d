"""`make bench` runs every bench module with a ``run(outdir)``; a helper module must not look like one."""
import importlib
import inspect
import pkgutil

import bench


def test_every_bench_run_takes_the_output_folder():
    mods = [m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")]
    runners = []
    for name in mods:
        mod = importlib.import_module(f"bench.{name}")
        run = getattr(mod, "run", None)
        if run is None:
            continue
        runners.append(name)
        params = list(inspect.signature(run).parameters)
        assert len(params) == 1, f"bench/{name}.py: run{inspect.signature(run)} must take (outdir)"
    assert {"drivers", "signal", "device", "device_comms", "gateway"} <= set(runners)
