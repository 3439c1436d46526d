"""What both command lines, `nabd` and `nabd-gateway`, promise alike (nabd_cli): the command table
lists every command module, --version, help in plain words, usage errors as exit 2 and, with
--json, every error as one JSON object on stdout."""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli as gateway_cli
from host import cli as host_cli

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLIS = [("nabd", host_cli, "host.commands"), ("nabd-gateway", gateway_cli, "gateway.commands")]


def run(prog: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / prog), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def walk(parser: argparse.ArgumentParser):
    yield parser
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                yield from walk(sub)


@pytest.mark.parametrize("prog,cli,package", CLIS)
def test_every_command_module_is_in_the_table(prog, cli, package):
    """A module in the commands package with register() but no table line would be silently absent."""
    pkg = importlib.import_module(package)
    modules = {f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
               if hasattr(importlib.import_module(f"{package}.{m.name}"), "register")}
    assert modules == set(cli._COMMANDS.values())
    top = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(top.choices) == list(cli._COMMANDS)


@pytest.mark.parametrize("prog,cli,package", CLIS)
def test_version(prog, cli, package):
    from importlib.metadata import version

    p = run(prog, "--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"{prog} {version('nabd')}"


@pytest.mark.parametrize("prog,cli,package", CLIS)
def test_help_is_plain_words(prog, cli, package):
    """No reStructuredText markup (``name``, :func:) in any --help, at any depth."""
    seen = 0
    for parser in walk(cli.build_parser()):
        text = parser.format_help()
        seen += 1
        for mark in ("``", ":func:", ":mod:", ".. "):
            assert mark not in text, f"{parser.prog} --help shows {mark!r}:\n{text}"
    assert seen > len(cli._COMMANDS)


@pytest.mark.parametrize("prog,argv", [
    ("nabd", ["analyze"]),                                  # missing file argument
    ("nabd", ["selftest", "--no-such-option"]),
    ("nabd", ["analyze", "x.csv", "--rate", "fast"]),        # not a number
    ("nabd-gateway", ["devices", "list"]),                   # --config is required
    ("nabd-gateway", ["quarantine", "list", "--config", "x.toml", "--limit", "many"]),
])
def test_usage_errors_exit_2_as_text_or_json(prog, argv):
    p = run(prog, *argv)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stdout == "" and p.stderr.startswith(f"usage: {prog}") and f"\n{prog}" in p.stderr
    p = run(prog, *argv, "--json")
    assert p.returncode == 2, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["ok"] is False and out["exit"] == 2 and out["error"]
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("prog", ["nabd", "nabd-gateway"])
def test_no_command_is_a_usage_error(prog):
    p = run(prog)
    assert p.returncode == 2 and "COMMAND" in p.stderr
    p = run(prog, "--json")
    assert p.returncode == 2 and json.loads(p.stdout)["exit"] == 2


def test_gateway_errors_are_json_with_json(tmp_path):
    """The gateway used to print its errors as text even with --json."""
    missing = tmp_path / "nope.toml"
    p = run("nabd-gateway", "devices", "list", "--config", str(missing), "--json")
    assert p.returncode == 2, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out == {"ok": False, "error": out["error"], "exit": 2} and str(missing) in out["error"]
    p = run("nabd-gateway", "devices", "list", "--config", str(missing))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("nabd-gateway: ") and str(missing) in p.stderr and len(p.stderr.splitlines()) == 1


def test_analyze_bad_rate_is_a_usage_error(tmp_path, capsys):
    csv = tmp_path / "rec.csv"
    csv.write_text("red,ir\n" + "".join(f"{1000 + i % 7},{2000 + i % 5}\n" for i in range(50)))
    for rate in ("0", "-25", "nan"):
        assert host_cli.main(["analyze", str(csv), "--rate", rate]) == 2, rate
        assert "--rate" in capsys.readouterr().err
    assert host_cli.main(["analyze", str(csv), "--rate", "0", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["exit"] == 2


@pytest.mark.parametrize("prog,cli,package", CLIS)
def test_every_command_takes_json(prog, cli, package):
    """README: "All commands take --json" (so any error can come out as JSON)."""
    leaves = [p for p in walk(cli.build_parser())
              if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]
    assert len(leaves) >= len(cli._COMMANDS)
    missing = [p.prog for p in leaves if "--json" not in p._option_string_actions]
    assert missing == []


@pytest.mark.parametrize("argv", [["host"], ["gateway.cli"]])
def test_python_dash_m_reports_errors_like_the_scripts(argv, tmp_path):
    """`python -m host` / `python -m gateway.cli` (used by host/site.py and the test harness) catch the
    same error type: a one-line message, not a traceback."""
    cmd = [sys.executable, "-m", *argv]
    cmd += (["analyze", str(tmp_path / "none.csv")] if argv == ["host"]
            else ["devices", "list", "--config", str(tmp_path / "none.toml")])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode in (2, 4) and "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
