"""Every file and command the README and docs/ name exists: docs describe the repository as it is."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", REPO / "hardware" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOP = ("firmware/", "sim/", "host/", "gateway/", "hardware/", "tests/", "bench/", "docs/", "compat/",
       "scripts/", "nabd_cli/", ".ci/")
CODE = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"^[\w.\-/]+$")


def _named_paths():
    for doc in DOCS:
        for m in CODE.finditer(doc.read_text(encoding="utf-8")):
            token = m.group(1).strip()
            if token.startswith(TOP) and PATH.match(token) and "*" not in token:
                yield doc.relative_to(REPO).as_posix(), token


@pytest.mark.parametrize(("doc", "path"), sorted(set(_named_paths())))
def test_named_path_exists(doc, path):
    assert (REPO / path).exists(), f"{doc} names {path}, which is not in the repository"


def _named_commands():
    for doc in DOCS:
        for m in re.finditer(r"`(nabd(?:-gateway)?) ((?:[a-z][a-z0-9-]*)(?: [a-z][a-z0-9-]*)?)",
                             doc.read_text(encoding="utf-8")):
            yield doc.relative_to(REPO).as_posix(), m.group(1), m.group(2)


def _exists(prog: str, words: list[str]) -> bool:
    """``prog words... --help`` exits 0 (the parser knows the words)."""
    from gateway.cli import build_parser as gateway_parser
    from host.cli import build_parser as host_parser

    parser = host_parser() if prog == "nabd" else gateway_parser()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            parser.parse_args([*words, "--help"])
        except SystemExit as e:
            return e.code == 0
        except Exception:  # noqa: BLE001 - the CLIs raise their usage error for an unknown word
            return False
    return False


@pytest.mark.parametrize(("doc", "prog", "words"), sorted(set(_named_commands())))
def test_named_command_exists(doc, prog, words):
    parts = words.split()
    # "nabd sim run" names a subcommand; "nabd analyze recording" may end in an argument's word
    assert _exists(prog, parts) or _exists(prog, parts[:1]), f"{doc} names `{prog} {words}`, which does not exist"
