"""``edgemon status`` lists a recording whose analysis was cut short in a row (power cuts, or a
file that kills the analysis) among its problems; once that recording is gone from the card
(deleted, or renamed and analysed under its new name) nothing will ever end its attempt, and the
problem stayed listed for good (a field trial: a card swapped after two power cuts)."""

from __future__ import annotations

from edgemon.status import collect_status
from edgemon.storage.store import Store
from tests.conftest import hoots
from tests.watch_helpers import write_wav


def cut_short_twice(store: Store, path) -> None:
    st = path.stat()
    for _ in range(2):   # two runs that died while this file was in progress
        store.begin_attempt(path.name, path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)


def test_a_recording_cut_short_is_a_problem_while_it_is_there_and_not_once_it_is_gone(tmp_path):
    root, db = tmp_path / "card", tmp_path / "d.db"
    there = write_wav(root / "20240701_060000.WAV", hoots(4.0))
    gone = write_wav(root / "20240701_070000.WAV", hoots(4.0, seed=1))
    with Store(db) as store:
        cut_short_twice(store, there)
        cut_short_twice(store, gone)
    gone.unlink()
    problems = collect_status(db, directory=root)["problems"]
    assert "20240701_060000.WAV: analysis cut short 2 times in a row" in problems, problems
    assert not any("20240701_070000.WAV" in p for p in problems), problems
