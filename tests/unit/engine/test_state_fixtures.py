"""Data directories written by every released state format restore exactly: the restarted worker decides the same.

Each ``tests/fixtures/state/v<N>/`` holds a data directory as the release with state format N left it
(``state.tar.xz``) and what that release did after restarting on it (``expected.json``); see
``tests/fixtures/state/generate.py``. Format 0 is the pickled format, converted on open.
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from cityops.engine.state import FORMAT_VERSION, StateStore

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "state"
FORMATS = sorted(int(p.name[1:]) for p in FIXTURES.glob("v*") if (p / "expected.json").exists())


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("state_fixture_generate", FIXTURES / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _unpack(fmt: int, tmp_path: Path) -> Path:
    with tarfile.open(FIXTURES / f"v{fmt}" / "state.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "state"


def test_every_released_format_has_a_fixture() -> None:
    assert FORMATS == list(range(FORMAT_VERSION + 1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_restored_worker_continues_exactly_as_the_release_that_wrote_it(fmt: int, tmp_path: Path) -> None:
    gen = _generator()
    fixture = FIXTURES / f"v{fmt}"
    state = _unpack(fmt, tmp_path)
    worker = gen.Worker(fixture, state)
    before = dict(worker.engine.counts)
    worker.run(gen.messages("B")[:5] + gen.messages("C"), gen.TICK_S["C"])
    got = json.loads(json.dumps(gen.outcome(worker, before), sort_keys=True, default=str))
    worker.store.close()
    want = json.loads((fixture / "expected.json").read_text())
    for part in want:  # one part at a time: a difference names what was restored wrongly
        assert got[part] == want[part], part
    if fmt < FORMAT_VERSION:  # converted on open; the original kept beside it
        assert (state / "format-0-backup" / "state.snapshot").exists()
    # and the converted directory opens again as the current format, with the same tables
    again = StateStore(state).open()
    assert again.offsets == {(t, p): o for t, p, o in want["offsets"]}
    again.close()
