"""The review page plays a call stored with a lead (``analysis.lead_in``) from its start in the
recording before: real contiguous WAVs, a real database written through ``Store``, the real page."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import soundfile

from edgemon.review import reviews
from edgemon.review.excerpt import read_excerpt
from edgemon.storage.rows import Detection
from edgemon.storage.store import Store
from tests.conftest import hoots, tone
from edgemon.files.preroll import recording_before   # as `edgemon review` gives it (cli_review)
from tests.review_helpers import BUNDLE_ID, review_server

RATE = 16000
FIRST, SECOND = "S01/20240501_060000.WAV", "S01/20240501_060020.WAV"
LEAD_WINDOWS = 2
# The default bundle's hop (2 s) in whole frames of 512 samples, as the analysis cut its windows.
LEAD_S = LEAD_WINDOWS * round(2.0 / (512 / RATE)) * 512 / RATE


def make_db(root: Path, second_starts: str = "2024-05-01T06:00:20Z") -> tuple[Path, Path, int]:
    """Two 20 s recordings, the second continuing the first unless ``second_starts`` says
    otherwise, and a hornbill call stored in the second from its start with a lead of
    ``LEAD_WINDOWS`` windows; (database, recordings, the detection's id)."""
    recordings, db = root / "recordings", root / "review.db"
    (recordings / "S01").mkdir(parents=True)
    with Store(db) as store:
        for name, start, samples in [(FIRST, "2024-05-01T06:00:00Z", hoots(20.0)),
                                     (SECOND, second_starts, tone(3000, 20.0, seed=1) * 0.3)]:
            path = recordings / name
            soundfile.write(path, samples, RATE, subtype="PCM_16")
            dets = [Detection(device_id="S01", source=name, start_s=0.0, end_s=3.5, start_utc=start,
                              end_utc=start, time_source="filename", clock_suspect=False,
                              label="hornbill_helmeted", confidence=0.9,
                              votes=json.dumps({"windows": 4, "member_votes": [4, 4], "lead": LEAD_WINDOWS}),
                              bundle_id=BUNDLE_ID)] if name == SECOND else []
            st = path.stat()
            store.commit_file(name, path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, duration_s=20.0,
                              start_utc=start, time_source="filename", clock_suspect=False,
                              bundle_id=BUNDLE_ID, detections=dets)
    with Store(db) as store:
        (detection_id,) = store.db.execute("SELECT id FROM detections").fetchone()
    return db, recordings, detection_id


def _pcm(path: Path) -> np.ndarray:
    return soundfile.read(path, dtype="int16")[0]


def test_a_call_begun_in_the_recording_before_plays_from_its_start_there(tmp_path):
    db, recordings, detection_id = make_db(tmp_path)
    head = round((LEAD_S + 2.0) * RATE)        # the lead's windows and the 2 s pre-roll
    own = round((3.5 + 2.0) * RATE)            # the detection and its 2 s post-roll
    excerpt = read_excerpt(reviews.detection(db, detection_id), recordings=recordings, db=db, recording_before=recording_before)
    assert excerpt.before == recordings / FIRST and excerpt.before_s == head / RATE
    # marked from the lead's first window, 2 s in, to the detection's end in its own recording
    assert (excerpt.mark_start_s, excerpt.mark_end_s) == (2.0, head / RATE + 3.5)
    with review_server(db, recordings) as (base, _):
        with urllib.request.urlopen(f"{base}/") as r:   # the list says so; its times stay the recording's own
            page = r.read().decode()
        assert "@ 0.0–3.5 s" in page and "began in the recording before" in page
        with urllib.request.urlopen(f"{base}/detections/{detection_id}/audio.wav") as r:
            played, rate = soundfile.read(io.BytesIO(r.read()), dtype="int16")
        with urllib.request.urlopen(f"{base}/detections/{detection_id}/spectrogram.png") as r:
            assert r.status == 200 and r.read().startswith(b"\x89PNG")
    assert rate == RATE and len(played) == head + own
    np.testing.assert_array_equal(played[:head], _pcm(recordings / FIRST)[-head:])
    np.testing.assert_array_equal(played[head:], _pcm(recordings / SECOND)[:own])


def test_without_the_recording_before_its_own_recording_plays_as_before(tmp_path):
    own = round((3.5 + 2.0) * RATE)
    db, recordings, detection_id = make_db(tmp_path / "gone")
    (recordings / FIRST).unlink()
    gone = read_excerpt(reviews.detection(db, detection_id), recordings=recordings, db=db, recording_before=recording_before)
    apart_db, apart, apart_id = make_db(tmp_path / "apart", second_starts="2024-05-01T06:00:30Z")
    after_a_gap = read_excerpt(reviews.detection(apart_db, apart_id), recordings=apart, db=apart_db, recording_before=recording_before)
    for excerpt, where in [(gone, recordings), (after_a_gap, apart)]:
        assert excerpt.before is None and len(excerpt.samples) == own
        assert (excerpt.mark_start_s, excerpt.mark_end_s) == (0.0, 3.5)
        np.testing.assert_array_equal((excerpt.samples * 32768).astype(np.int16), _pcm(where / SECOND)[:own])
