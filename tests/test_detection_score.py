"""A detection's raw vote score is stored beside its (calibrated) confidence."""

from __future__ import annotations

import dataclasses

from edgemon.storage.store import Store
from tests.test_store import SOURCE, commit, detection


def test_score_is_stored_beside_confidence_and_older_rows_keep_null(tmp_path):
    with Store(tmp_path / "d.db") as store:
        commit(store, [dataclasses.replace(detection(0.0, confidence=0.93), score=0.52), detection(5.0)])
        rows = store.db.execute("SELECT confidence, score FROM detections WHERE source = ? ORDER BY start_s",
                                (SOURCE,)).fetchall()
    assert rows == [(0.93, 0.52), (0.9, None)]
