"""The demo's closing hint is a command the user can paste: `cityops` itself only when PATH finds it."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import pytest

from cityops.demo import Demo


def test_evaluate_command_names_the_interpreters_cityops_when_it_is_not_on_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = Path(sys.executable).parent / "cityops"
    assert script.is_file(), "the test venv has the cityops console script"
    demo = Demo(argparse.Namespace(dir=str(tmp_path)))
    tail = (f" evaluate-alerts --env-file {shlex.quote(str(tmp_path / 'cityops.env'))} "
            f"--truth {shlex.quote(str(tmp_path / 'incidents.json'))} --alerts {shlex.quote(str(tmp_path / 'alerts.jsonl'))}")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # `make demo`: the venv's bin is not on PATH
    assert demo.evaluate_command() == shlex.quote(str(script)) + tail
    monkeypatch.setenv("PATH", os.pathsep.join([str(script.parent), str(empty)]))
    assert demo.evaluate_command() == "cityops" + tail
    other = tmp_path / "other-bin"
    other.mkdir()
    (other / "cityops").write_text("#!/bin/sh\n")
    (other / "cityops").chmod(0o755)
    monkeypatch.setenv("PATH", str(other))  # another install's cityops is not this demo's
    assert demo.evaluate_command() == shlex.quote(str(script)) + tail
