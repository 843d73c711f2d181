"""``edgemon review`` over HTTP (a real server on a real database and real recordings), and its
parts: verdicts, precision intervals, review order, spectrogram PNG, charts."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import re
import socket
import sqlite3
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edgemon.errors import AudioError
from edgemon.review import reviews
from edgemon.review.app import ReviewConfig, ReviewServerError, create_app, with_token
from edgemon.review.charts import charts_svg, effort_hours
from edgemon.review.excerpt import read_excerpt
from edgemon.review.spectrogram import png_bytes, spectrogram_rgb
from edgemon.storage.rows import Detection
from edgemon.storage.store import Store
from tests.review_helpers import BUNDLE_ID, DETECTIONS, free_port, make_review_db, review_server
from tests.waits import poll_until


@pytest.fixture()
def review_db(tmp_path):
    return make_review_db(tmp_path)


def _get(url: str, headers: dict | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as e:
        with e:                 # an error response holds its connection until closed
            return e.code, e.headers.get("content-type", ""), e.read()


def _post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            body = e.read()
        return e.code, json.loads(body) if "json" in e.headers.get("content-type", "") else {"text": body.decode()}


def decode_png(data: bytes) -> np.ndarray:
    """8-bit RGB, filter-0 PNG (what ``png_bytes`` writes) -> uint8 [h, w, 3]; checks every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = header[:4]
    assert (depth, colour) == (8, 2)
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(height, width, 3)


def test_wilson_interval_matches_the_textbook_values():
    low, high = reviews.wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert reviews.wilson_interval(0, 0) == (0.0, 1.0)
    low, high = reviews.wilson_interval(0, 5)
    assert low == pytest.approx(0.0, abs=1e-12) and 0.4 < high < 0.45
    assert reviews.wilson_interval(5, 5)[1] == pytest.approx(1.0)


def test_reviews_table_is_added_to_an_existing_database(review_db):
    db, _ = review_db
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE reviews")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm008_reviews'")
    reviews.open_for_review(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM detections").fetchone()[0] == len(DETECTIONS)
        assert conn.execute("SELECT count(*) FROM reviews").fetchone()[0] == 0


def test_a_reviewer_marking_again_replaces_their_verdict_and_precision_follows(review_db):
    db, _ = review_db
    by_label = {r["label"]: r for r in reviews.list_detections(db, order="time")}
    gibbon = by_label["gibbon_duet"]["id"]
    reviews.add_verdict(db, gibbon, "correct", "ann")
    reviews.add_verdict(db, gibbon, "wrong", "ann")
    hornbills = [r["id"] for r in reviews.list_detections(db, label="hornbill_helmeted")]
    reviews.add_verdict(db, hornbills[0], "correct", "ann")
    reviews.add_verdict(db, hornbills[1], "unsure", "ann")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM reviews").fetchone()[0] == 3
    precision = {c.label: c for c in reviews.precision_by_class(db)}
    assert (precision["gibbon_duet"].judged, precision["gibbon_duet"].correct) == (1, 0)
    assert (precision["hornbill_helmeted"].judged, precision["hornbill_helmeted"].correct) == (1, 1)
    assert precision["great_argus"].judged == 0 and precision["great_argus"].high == 1.0
    # of one bundle: another bundle's detections and verdicts do not count
    assert [c.judged for c in reviews.precision_by_class(db, "another-bundle")] == []
    assert {c.label: c.judged for c in reviews.precision_by_class(db, BUNDLE_ID)} == \
        {label: c.judged for label, c in precision.items()}


def test_the_verdict_given_last_counts_when_the_clock_was_set_back(review_db):
    """A review: on a Pi whose clock fake-hwclock set back after a power cut, bob's later "wrong"
    carried an earlier time than ann's "correct", and ann's counted as the latest verdict."""
    db, _ = review_db
    gibbon = {r["label"]: r for r in reviews.list_detections(db, order="time")}["gibbon_duet"]["id"]
    ann = reviews.add_verdict(db, gibbon, "correct", "ann")
    with sqlite3.connect(db) as conn:   # ann judged while the clock ran a day ahead of bob's
        conn.execute("UPDATE reviews SET reviewed_at = '2099-01-01T10:30:00.000Z' WHERE reviewer = 'ann'")
    bob = reviews.add_verdict(db, gibbon, "wrong", "bob")
    assert bob["reviewed_at"] == "2099-01-01T10:30:00.001Z" and ann["reviewed_at"] < bob["reviewed_at"]
    precision = {c.label: c for c in reviews.precision_by_class(db)}
    assert (precision["gibbon_duet"].judged, precision["gibbon_duet"].correct) == (1, 0)


def test_bad_verdicts_are_refused_and_nothing_is_stored(review_db):
    db, _ = review_db
    first = reviews.list_detections(db, order="time")[0]
    with pytest.raises(reviews.ReviewError, match="unknown verdict 'maybe'"):
        reviews.add_verdict(db, first["id"], "maybe", "ann")
    with pytest.raises(reviews.ReviewError, match="needs another known label"):
        reviews.add_verdict(db, first["id"], "relabel", "ann", new_label=first["label"])
    with pytest.raises(reviews.ReviewError, match="no detection with id 999"):
        reviews.add_verdict(db, 999, "correct", "ann")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM reviews").fetchone()[0] == 0


def test_a_refused_relabel_says_why_and_which_labels_it_may_take(review_db):
    """A newcomer trial: relabelling a great_argus detection to great_argus, and one to 'tiger',
    both answered "needs another known label, got '…'", which said neither that the first was the
    detected label already nor which labels were known."""
    db, _ = review_db
    first = reviews.list_detections(db, order="time")[0]
    known = ("gibbon_duet", "great_argus", "hornbill_helmeted", "hornbill_rhino")
    others = ", ".join(x for x in known if x != first["label"])
    with pytest.raises(reviews.ReviewError) as same:
        reviews.add_verdict(db, first["id"], "relabel", "ann", new_label=first["label"], labels=known)
    assert f"already {first['label']!r}" in str(same.value) and "'correct'" in str(same.value)
    assert str(same.value).endswith(f"choose one of {others}")
    with pytest.raises(reviews.ReviewError) as unknown:
        reviews.add_verdict(db, first["id"], "relabel", "ann", new_label="tiger", labels=known)
    assert "unknown label 'tiger'" in str(unknown.value) and str(unknown.value).endswith(f"choose one of {others}")
    with pytest.raises(reviews.ReviewError, match="got none: choose one of"):
        reviews.add_verdict(db, first["id"], "relabel", "ann", labels=known)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM reviews").fetchone()[0] == 0


def test_teach_order_puts_uncertain_detections_of_false_alarm_classes_first(review_db):
    db, _ = review_db
    before = reviews.list_detections(db)
    # Unreviewed: the split 0.45 gibbon first, the sure 0.99 argus last.
    assert [r["label"] for r in before] == ["gibbon_duet", "hornbill_helmeted", "hornbill_helmeted", "great_argus"]
    sure_hornbill, unsure_hornbill = before[2], before[1]
    assert sure_hornbill["confidence"] > unsure_hornbill["confidence"]
    reviews.add_verdict(db, sure_hornbill["id"], "wrong", "ann")
    after = {r["id"]: r for r in reviews.list_detections(db)}
    # Its class now has a false alarm: the other hornbill teaches more than before; other classes
    # are unchanged; the reviewed detection goes last.
    assert after[unsure_hornbill["id"]]["priority"] > unsure_hornbill["priority"] + 0.05
    assert after[before[3]["id"]]["priority"] == pytest.approx(before[3]["priority"])
    ranked = reviews.list_detections(db)
    assert ranked[-1]["id"] == sure_hornbill["id"] and ranked[-1]["verdict"] == "wrong"
    assert [r["id"] for r in reviews.list_detections(db, unreviewed_only=True)] == [r["id"] for r in ranked[:-1]]


@pytest.mark.parametrize("label", [None, "great_argus"])
def test_the_time_order_reads_detections_from_the_time_index_not_a_sort_of_all(review_db, label):
    """A year at a busy site holds a million detections: ordered by coalesce(start_utc, ''),
    every page of the time order sorted them all (1.3 s here) rather than reading the first
    page's worth from the index on start_utc. The plan says which: the same for any size."""
    db, _ = review_db
    clauses, params = ["1"], []
    if label:
        clauses.append("d.label = ?")
        params.append(label)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.create_function("uncertainty", 2, reviews.uncertainty)
        conn.create_function("false_rate", 1, lambda _: 0.5)
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + reviews.page_query("time", clauses, ""),
                                               [*params, 50, 0])]
    assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan
    assert any(step.startswith(("SCAN d USING INDEX detections_", "SEARCH d USING INDEX detections_"))
               and "start_utc" in step for step in plan), plan

def test_spectrogram_png_decodes_and_marks_the_detection():
    rate = 16000
    t = np.arange(4 * rate) / rate
    samples = (0.5 * np.sin(2 * np.pi * 2000 * t)).astype(np.float32)
    rgb = spectrogram_rgb(samples, rate, mark=(1.0, 3.0), width=400)
    assert rgb.shape == (257 + 6, 400, 3)
    decoded = decode_png(png_bytes(rgb))
    assert np.array_equal(decoded, rgb)
    # The 2 kHz line is the brightest row: 2000 / 8000 of the way up from the bottom.
    brightness = decoded[:-6].astype(int).sum(axis=(1, 2))
    assert abs(brightness.argmax() - (256 - 64)) <= 1
    bar = (decoded[-1] == 255).all(axis=1)
    assert bar[110:290].all() and not bar[:90].any() and not bar[310:].any()


def test_a_spectrogram_of_silence_is_dark_and_a_long_one_is_drawn_in_little_memory():
    """A review: each image was scaled to its own loudest bin, so digital silence was drawn at full
    brightness; and every frame of the excerpt was transformed at once (a minute at 96 kHz: 564 MiB
    at its peak, beside the recorder's own work)."""
    import tracemalloc

    from edgemon.review.spectrogram import PALETTE

    image = spectrogram_rgb(np.zeros(64000, np.float32), 16000)[:-6]
    assert (image == PALETTE[0]).all()
    minute = (0.1 * np.random.default_rng(0).standard_normal(96000 * 64)).astype(np.float32)
    tracemalloc.start()
    try:
        spectrogram_rgb(minute, 96000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB"     # the excerpt itself holds 23 MiB


def test_charts_show_calls_and_effort_per_hour_and_day(review_db):
    db, _ = review_db
    by_hour, by_day = effort_hours(db)
    assert by_hour == pytest.approx({6: 20 / 3600, 7: 20 / 3600})
    assert by_day == pytest.approx({"2024-05-01": 20 / 3600, "2024-05-02": 20 / 3600})
    hour_svg, day_svg = charts_svg(db)
    assert hour_svg.startswith("<svg") and "hornbill_helmeted, 06: 1 call(s) in 0.01 h" in hour_svg
    assert "great_argus, 05-02: 1 call(s)" in day_svg and "05-01" in day_svg


def test_days_hours_and_times_are_the_recorders_own_with_a_time_zone(review_db):
    """A season trial: a dawn chorus on Borneo (UTC+8) was charted at 22-01 h and listed under the
    day before, as UTC, with the `timezone` setting given. Los Angeles (UTC-7 in May) puts the
    first recording (06:00Z on 1 May) at 23:00 on 30 April."""
    from zoneinfo import ZoneInfo

    from edgemon.review.local_time import day_bounds, spans_by_local_hour
    from edgemon.utc import parse_utc

    db, _ = review_db
    la = ZoneInfo("America/Los_Angeles")
    by_hour, by_day = effort_hours(db, zone=la)
    assert by_hour == pytest.approx({23: 20 / 3600, 0: 20 / 3600})
    assert by_day == pytest.approx({"2024-04-30": 20 / 3600, "2024-05-02": 20 / 3600})
    hour_svg, day_svg = charts_svg(db, zone=la)
    assert "Calls by hour of day (America/Los_Angeles)" in hour_svg and "times America/Los_Angeles" in hour_svg
    assert "hornbill_helmeted, 23: 1 call(s) in 0.01 h" in hour_svg and "great_argus, 05-02: 1 call(s)" in day_svg
    assert reviews.days_and_labels(db, la)[0] == ["2024-04-30", "2024-05-02"]
    assert reviews.days_and_labels(db)[0] == ["2024-05-01", "2024-05-02"]       # no zone: UTC, as before
    rows = reviews.list_detections(db, order="time", day="2024-04-30", zone=la)
    assert [(r["label"], r["start_local"]) for r in rows] == [
        ("hornbill_helmeted", "2024-04-30T23:00:02.000-07:00"), ("gibbon_duet", "2024-04-30T23:00:10.000-07:00")]
    assert reviews.list_detections(db, day="2024-05-01", zone=la) == []
    # A half-hour zone cuts where its clock does: 05:50Z-06:10Z is 11:20-11:40 in India, one hour.
    kolkata = ZoneInfo("Asia/Kolkata")
    pieces = list(spans_by_local_hour(parse_utc("2024-05-01T05:50:00Z"), 1200, kolkata))
    assert {h for h, _, _ in pieces} == {11} and sum(x for _, _, x in pieces) == pytest.approx(1 / 3)
    pieces = list(spans_by_local_hour(parse_utc("2024-05-01T06:20:00Z"), 1200, kolkata))
    assert {h: sum(x for hh, _, x in pieces if hh == h) for h in (11, 12)} == pytest.approx({11: 1 / 6, 12: 1 / 6})
    # The day summer time begins has 23 hours.
    assert day_bounds("2024-03-31", ZoneInfo("Europe/Berlin")) == ("2024-03-30T23:00:00.000Z",
                                                                   "2024-03-31T22:00:00.000Z")


def test_a_day_without_audio_is_a_grey_column_of_the_day_chart(review_db):
    """A season trial: Los Angeles puts the two recordings on 30 April and 2 May; the day chart drew
    04-30 and 05-02 side by side, the day between them (no audio at all) not drawn, so a gap in the
    season looked like two days of listening in a row. A run of days beyond ``LONGEST_GAP_DAYS``
    (a clock reset to 2000 before a 2024 season) is one column."""
    from zoneinfo import ZoneInfo

    from edgemon.review.charts import LONGEST_GAP_DAYS, day_columns

    db, _ = review_db
    _, day_svg = charts_svg(db, zone=ZoneInfo("America/Los_Angeles"))
    assert re.findall(r">(\d\d-\d\d)</text>", day_svg) == ["04-30", "05-01", "05-02"]
    assert "<title>05-01: 0.00 h analysed</title>" in day_svg
    assert re.search(r'fill="#ddd" stroke="#eee"><title>great_argus, 05-01: 0 call\(s\) in 0.00 h</title>', day_svg)
    assert day_columns({"2000-01-01", "2024-03-01", "2024-03-03"}) == (
        ["2000-01-01", "2000-01-02..2024-02-29", "2024-03-01", "2024-03-02", "2024-03-03"],
        ["01-01", "+8825 d", "03-01", "03-02", "03-03"])
    last = dt.date(2024, 3, 1) + dt.timedelta(days=LONGEST_GAP_DAYS + 1)
    assert len(day_columns({"2024-03-01", last.isoformat()})[0]) == LONGEST_GAP_DAYS + 2   # a month: every day


def test_the_page_lists_by_the_recorders_days_with_a_time_zone(review_db):
    db, recordings = review_db
    with review_server(db, recordings, "--timezone", "America/Los_Angeles") as (base, _):
        status, _, page = _get(base + "/?order=time&day=2024-04-30")
        assert status == 200 and b"day (America/Los_Angeles)" in page
        assert page.count(b'<li class="detection') == 2 and b"2024-04-30T23:00:02.000-07:00" in page
        assert b"Calls by hour of day (America/Los_Angeles)" in _get(base + "/charts")[2]


def test_page_audio_spectrogram_and_verdict_over_http(review_db):
    db, recordings = review_db
    with review_server(db, recordings) as (base, line):
        assert line == f"review page: {base}/"
        status, kind, page = _get(base + "/?order=time")
        assert status == 200 and "text/html" in kind
        assert page.count(b'<li class="detection') == len(DETECTIONS)
        assert b"https://" not in page and b"http://" not in page   # nothing from the internet
        ids = [int(x) for x in re.findall(rb'data-id="(\d+)"', page)]
        status, kind, wav = _get(f"{base}/detections/{ids[0]}/audio.wav")
        assert status == 200 and kind == "audio/wav"
        samples, rate = soundfile.read(io.BytesIO(wav))
        assert rate == 16000 and len(samples) == pytest.approx((6.0 + 2.0) * 16000, abs=1)  # 0..8 s: pre-roll cut at 0
        status, kind, png = _get(f"{base}/detections/{ids[1]}/spectrogram.png")
        assert status == 200 and kind == "image/png" and decode_png(png).shape[1] == 600
        status, row = _post(base + "/api/verdict", {"id": ids[1], "verdict": "relabel", "label": "hornbill_rhino"})
        assert status == 200 and row["new_label"] == "hornbill_rhino" and row["reviewer"] == "tester"
        status, row = _post(base + "/api/verdict", {"id": ids[1], "verdict": "relabel", "label": "no_such_bird"})
        assert status == 400 and "no_such_bird" in row["error"]
        # Ids a second newcomer trial sent: 10^20 was a 500 (OverflowError), 1.7 and true judged detection 1.
        for odd in (10 ** 20, 1.7, True, "1"):
            status, row = _post(base + "/api/verdict", {"id": odd, "verdict": "correct"})
            assert status == 400 and "ids are whole numbers" in row["error"], odd
        assert _get(f"{base}/detections/{10 ** 20}/audio.wav")[0] == 404
        # A newcomer trial: a well-formed verdict on an id no detection has was a 400, as if malformed.
        status, row = _post(base + "/api/verdict", {"id": 999999, "verdict": "correct"})
        assert status == 404 and "no detection with id 999999" in row["error"], row
        # A newcomer trial: a body that is no object, and a bundle the database never stored.
        status, row = _post(base + "/api/verdict", [ids[0], "correct"])
        assert status == 400 and row["error"].startswith("a verdict is a JSON object"), row
        status, _, said = _get(base + "/api/precision?bundle=nosuch")
        assert status == 404 and "unknown bundle id 'nosuch'" in json.loads(said)["error"]
        assert _get(base + "/api/precision")[0] == 200
        # The rows' latest verdicts, as the page asks for them (a colleague's among them).
        status, _, said = _get(f"{base}/api/verdicts?ids={ids[0]},{ids[1]},{ids[2]}")
        latest = json.loads(said)
        assert status == 200 and latest[str(ids[1])]["new_label"] == "hornbill_rhino", latest
        assert latest[str(ids[1])]["reviewer"] == "tester" and latest[str(ids[2])] is None
        # With the page's keys: an id that now names another detection is left out, not shown.
        status, _, said = _get(f"{base}/api/verdicts?ids={ids[1]},{ids[2]}&keys=0000000000000000,"
                               f"{reviews.detection_key(reviews.detection(db, ids[2]))}")
        assert status == 200 and json.loads(said) == {str(ids[2]): None}, said
        assert _get(f"{base}/api/verdicts?ids={ids[1]},{ids[2]}&keys=0000000000000000")[0] == 400
        for odd in ("x", "1.5", str(10 ** 20), ",".join(["1"] * 201)):
            status, _, said = _get(f"{base}/api/verdicts?ids={odd}")
            assert status == 400 and json.loads(said)["error"], odd
        # Another site's page cannot judge: no form/text POST, no cross-origin JSON.
        status, said = _post(base + "/api/verdict", {"id": ids[0], "verdict": "wrong"}, {"Content-Type": "text/plain"})
        assert status == 415 and "Content-Type: application/json" in said["error"], said
        assert _post(base + "/api/verdict", {"id": ids[0], "verdict": "wrong"}, {"Origin": "http://evil.example"})[0] == 403
        status, _, charts = _get(base + "/charts")
        assert status == 200 and charts.count(b"<svg") == 2
        # A foreign Host (DNS rebinding) is refused on a local binding.
        assert _get(base + "/", {"Host": "evil.example"})[0] == 400
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT verdict, new_label FROM reviews").fetchall() == [("relabel", "hornbill_rhino")]



def _get_headers(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(response.headers)


def test_an_id_that_names_another_detection_now_is_neither_shown_from_cache_nor_judged(review_db):
    """A review: media were cached for an hour under URLs keyed by id alone, and ids are reused by
    another database served at the same address and after a restore; a tab left open then showed
    the old sound for the new detection, and its verdict went to the new one."""
    db, recordings = review_db
    with review_server(db, recordings) as (base, _):
        _, _, page = _get(base + "/?order=time")
        first_id, key = re.search(rb'data-id="(\d+)" data-key="([0-9a-f]+)"', page).groups()
        first_id, key = int(first_id), key.decode()
        media = f"/detections/{first_id}/spectrogram.png?k={key}"
        assert media.encode() in page and f"/detections/{first_id}/audio.wav?k={key}".encode() in page
        assert _get_headers(base + media)["cache-control"] == "private, max-age=3600"
        assert _get_headers(f"{base}/detections/{first_id}/spectrogram.png")["cache-control"] == "no-store"
        with sqlite3.connect(db) as conn:   # the id now names another detection (a restored copy, say)
            conn.execute("UPDATE detections SET start_s = start_s + 1, end_s = end_s + 1 WHERE id = ?", [first_id])
        assert _get(base + media)[0] == 409
        assert _get(f"{base}/detections/{first_id}/audio.wav?k={key}")[0] == 409
        status, row = _post(base + "/api/verdict", {"id": first_id, "key": key, "verdict": "wrong"})
        assert status == 409 and "reload" in row["error"]
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM reviews").fetchone()[0] == 0
        _, _, page = _get(base + "/?order=time")   # reloaded: the new key judges
        new_key = re.search(rf'data-id="{first_id}" data-key="([0-9a-f]+)"'.encode(), page).group(1).decode()
        assert new_key != key
        assert _post(base + "/api/verdict", {"id": first_id, "key": new_key, "verdict": "wrong"})[0] == 200
        # Re-analysed away since the page showed it (a review: 400, and no word of reloading).
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM reviews")
            conn.execute("DELETE FROM detections WHERE id = ?", [first_id])
        status, row = _post(base + "/api/verdict", {"id": first_id, "key": new_key, "verdict": "correct"})
        assert status == 409 and "no longer stored" in row["error"] and "reload" in row["error"]
        # A verdict is a few dozen bytes: a huge body is refused, not read into memory.
        assert _post(base + "/api/verdict", {"id": first_id, "verdict": "wrong", "pad": "x" * 100_000})[0] == 413
        # Nested deeper than json reads (within the 64 KB): a 400, not a 500 and a traceback.
        deep = urllib.request.Request(base + "/api/verdict", data=b"[" * 50_000, method="POST",
                                      headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(deep, timeout=10)
        with refused.value as error:
            assert error.code == 400 and "nested too deep" in json.loads(error.read())["error"]


def test_precision_counts_only_verdicts_on_detections_still_stored(review_db):
    """Found by a newcomer trial: reanalyse removes detections no longer found and their reviews
    stay behind; the page's precision still counted them, beside a list that no longer showed them."""
    db, _ = review_db
    hornbills = [r["id"] for r in reviews.list_detections(db, label="hornbill_helmeted")]
    for detection_id in hornbills:
        reviews.add_verdict(db, detection_id, "correct", "ann")
    judged = {c.label: c.judged for c in reviews.precision_by_class(db)}["hornbill_helmeted"]
    assert judged == len(hornbills) >= 2
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM detections WHERE id = ?", [hornbills[0]])   # as reanalyse removes one
    assert {c.label: c.judged for c in reviews.precision_by_class(db)}["hornbill_helmeted"] == judged - 1
    assert {c.label: c.judged for c in reviews.precision_by_class(db, BUNDLE_ID)}["hornbill_helmeted"] == judged - 1


def test_a_bad_page_offset_or_an_empty_reviewer_is_one_line(review_db):
    db, recordings = review_db
    with review_server(db, recordings) as (base, _):
        for offset in ("99999999999999999999999", "9223372036854775808", "-1", "1.5", "%C2%B2"):
            status, _, body = _get(base + f"/?offset={offset}")          # a huge one was a 500 and a traceback
            assert status == 400 and body.startswith(b"error: offset ") and body.count(b"\n") == 1, (offset, body)
        assert _get(base + "/?offset=50")[0] == 200
    with pytest.raises(ReviewServerError, match="needs a reviewer name"):   # every verdict was refused
        create_app(ReviewConfig(db=db, reviewer=" "))


def test_a_verdict_someone_else_gave_is_shown_with_their_name(review_db):
    """Found by a newcomer trial: bob's verdict replaced alice's, and her page showed it unnamed."""
    db, recordings = review_db
    first, second = [r["id"] for r in reviews.list_detections(db, order="time")][:2]
    reviews.add_verdict(db, first, "wrong", "bob")
    reviews.add_verdict(db, second, "correct", "tester")
    with review_server(db, recordings) as (base, _):
        page = _get(base + "/?order=time")[2].decode()
    assert page.count("(by bob)") == 1 and "(by tester)" not in page

def test_missing_recording_is_a_404_naming_it(review_db, tmp_path):
    db, recordings = review_db
    (recordings / "S01" / "20240501_060000.WAV").rename(tmp_path / "moved.wav")
    with review_server(db, recordings) as (base, _):
        status, _, body = _get(base + "/detections/1/audio.wav")
        assert status == 404 and b"S01/20240501_060000.WAV" in body and str(recordings).encode() in body
        assert b"moved or deleted" in body   # --recordings was given: not "give --recordings DIR"


def test_binding_beyond_localhost_requires_the_token(review_db):
    db, recordings = review_db
    with review_server(db, recordings, host="0.0.0.0") as (base, line):
        assert f"http://{socket.gethostname()}:" in line      # an address another machine can open
        token = line.rsplit("?token=", 1)[1]
        assert len(token) >= 20
        assert _get(base + "/")[0] == 401
        assert _get(base + "/detections/1/audio.wav")[0] == 401
        assert _get(base + "/static/review.js")[0] == 401
        assert _post(base + "/api/verdict", {"id": 1, "verdict": "correct"})[0] == 401
        assert _get(base + "/", {"X-Review-Token": token + "x"})[0] == 401
        assert _get(base + "/", {"X-Review-Token": token})[0] == 200
        assert _post(base + "/api/verdict", {"id": 1, "verdict": "correct"}, {"X-Review-Token": token})[0] == 200
        # The redirect that drops the token from the address keeps the rest of the query as it was
        # (a second newcomer trial: it was decoded, so label=a%26b=c became label=a&b=c).
        import http.client
        conn = http.client.HTTPConnection(base.split("//", 1)[1], timeout=10)
        conn.request("GET", f"/?token={token}&order=time&label=a%26b%3Dc")
        response = conn.getresponse()
        assert response.status == 303 and response.getheader("location") == "/?order=time&label=a%26b%3Dc"
        conn.close()
        # A path starting '//' redirected to '//evil.example/': another site, to a browser.
        conn = http.client.HTTPConnection(base.split("//", 1)[1], timeout=10)
        conn.request("GET", f"//evil.example/?token={token}")
        response = conn.getresponse()
        assert response.status == 303 and response.getheader("location") == "/evil.example/"
        conn.close()


def test_a_request_from_another_sites_page_is_refused_and_the_page_cannot_be_framed(review_db):
    """Bound to 127.0.0.1 there is no token: any web page the reviewer visited could frame the
    page (keys typed into it were stored as verdicts) or load detections' audio and spectrograms
    (a security review). Browsers say who asked (Sec-Fetch-*); a link followed to it still opens."""
    db, recordings = review_db
    image = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    frame = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}
    with review_server(db, recordings) as (base, _):
        assert _get(base + "/detections/1/spectrogram.png", image)[0] == 403
        assert _get(base + "/detections/1/audio.wav", {**image, "Sec-Fetch-Dest": "audio"})[0] == 403
        assert _get(base + "/detections/1/audio.wav", {**image, "Sec-Fetch-Site": "same-site"})[0] == 403
        assert _get(base + "/", frame)[0] == 403
        assert _post(base + "/api/verdict", {"id": 1, "verdict": "wrong"},
                     {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"})[0] == 403
        assert _get(base + "/", {**frame, "Sec-Fetch-Dest": "document"})[0] == 200   # a link followed
        assert _get(base + "/detections/1/spectrogram.png", {**image, "Sec-Fetch-Site": "same-origin"})[0] == 200
        with urllib.request.urlopen(base + "/", timeout=10) as response:
            assert response.headers["X-Frame-Options"] == "DENY"
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
            assert response.headers["Cross-Origin-Resource-Policy"] == "same-origin"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM reviews").fetchone() == (0,)


def test_config_refuses_a_public_binding_without_token(review_db):
    db, _ = review_db
    with pytest.raises(ReviewServerError, match="0.0.0.0 .* needs a token"):
        create_app(ReviewConfig(db=db, host="0.0.0.0"))
    assert with_token(ReviewConfig(db=db)).token is None
    assert with_token(ReviewConfig(db=db, host="192.168.1.5")).token
    with pytest.raises(ReviewServerError, match="--token is blank"):   # ' ' was taken as the token
        with_token(ReviewConfig(db=db, host="0.0.0.0", token=" "))


def test_missing_database_is_a_one_line_error(tmp_path):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "edgemon", "review", "--db", str(tmp_path / "none.db")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: detections database not found: {tmp_path / 'none.db'}"
    assert not (tmp_path / "none.db").exists()


def test_a_live_detection_plays_its_saved_clip(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    clip = clips / "20240501T060000000Z_gibbon_duet.flac"
    soundfile.write(clip, np.zeros(16000 * 7, np.float32), 16000, format="FLAC")
    row = {"id": 9, "source": "live:mic0", "start_s": 100.0, "end_s": 103.0, "clip_path": "/card/moved/" + clip.name,
           "file_path": None}
    excerpt = read_excerpt(row, clips=clips)
    assert excerpt.path == clip and len(excerpt.samples) == 16000 * 7
    assert (excerpt.mark_start_s, excerpt.mark_end_s) == (2.0, 5.0)   # stored before its offset was: the pre-roll
    # Where the detection begins in its clip, as stored (a stream that began 0.5 s before it).
    started_late = read_excerpt(dict(row, clip_offset_s=0.5), clips=clips)
    assert (started_late.mark_start_s, started_late.mark_end_s) == (0.5, 3.5)
    # Without --clips, a live detection's missing clip is said as such, and --clips named, not
    # --recordings (which a live stream has none of: a live trial).
    with pytest.raises(AudioError, match=r"audio of detection 9 not found: its clip /card/moved/\S+ is not there "
                                         r"\(give --clips DIR"):
        read_excerpt(row)
    with pytest.raises(AudioError, match=f"nor in {tmp_path / 'elsewhere'} \\(give --clips DIR"):
        read_excerpt(row, clips=tmp_path / "elsewhere")
    # A file under the clip's name longer than any clip listen saves is not read whole.
    soundfile.write(clip, np.zeros(16000 * 600, np.float32), 16000, format="FLAC")
    assert len(read_excerpt(row, clips=clips).samples) == 16000 * 180


def test_a_recording_whose_header_was_never_finalised_plays_as_it_was_analysed(review_db):
    """A review: analysis reads an AudioMoth file whose header was never finalised (the battery
    died) through a mended header and stores its detections; the page read it with plain
    libsndfile, found no audio, and answered 404 for its audio and spectrogram."""
    from tests.watch_helpers import unfinalised_header

    db, recordings = review_db
    row = reviews.detection(db, reviews.list_detections(db, order="time")[0]["id"])
    whole = read_excerpt(row, recordings=recordings)
    unfinalised_header(recordings / row["source"])
    mended = read_excerpt(row, recordings=recordings)
    assert mended.rate == whole.rate and np.array_equal(mended.samples, whole.samples)


def test_a_source_name_leaving_the_recordings_directory_is_not_read(tmp_path):
    """A review: a detection's source joined to --recordings unchecked, so a database naming
    '../private/x.wav' or an absolute path served that file's audio."""
    recordings, private = tmp_path / "recordings", tmp_path / "private" / "x.wav"
    recordings.mkdir()
    private.parent.mkdir()
    soundfile.write(private, np.zeros(16000 * 8, np.float32), 16000)
    for source in ("../private/x.wav", str(private), "S01/../../private/x.wav"):
        row = {"id": 3, "source": source, "start_s": 2.0, "end_s": 5.0, "clip_path": None, "file_path": None}
        with pytest.raises(AudioError, match=f"audio of detection 3 not found: {re.escape(source)} is not in"):
            read_excerpt(row, recordings=recordings)
    (recordings / "S01").mkdir()
    soundfile.write(recordings / "S01" / "y.wav", np.zeros(16000 * 8, np.float32), 16000)
    row = {"id": 4, "source": "S01/./y.wav", "start_s": 2.0, "end_s": 5.0, "clip_path": None, "file_path": None}
    assert len(read_excerpt(row, recordings=recordings).samples) == 16000 * 7


def test_a_call_can_be_relabelled_to_a_species_the_sites_bundle_knows(review_db):
    """A review: the relabel list was the detected labels and the embedded bundle's, so a site
    running its own bundle could not name one of its species not yet detected (and was offered
    the default's, which its adapt then dropped)."""
    db, recordings = review_db
    with Store(db) as store:
        store.record_bundle("site-bundle", {"labels": ["noise", "orangutan_longcall", "gibbon_duet"],
                                            "background_label": "noise"})
    with review_server(db, recordings) as (base, _):
        page = _get(base + "/")[2].decode()
        offered = set(re.findall(r'data-label="([^"]+)"', page))
        assert offered == {"orangutan_longcall", "gibbon_duet", "hornbill_helmeted", "great_argus"}, offered
        first = int(re.findall(r'data-id="(\d+)"', page)[0])
        status, row = _post(base + "/api/verdict", {"id": first, "verdict": "relabel", "label": "orangutan_longcall"})
        assert status == 200 and row["new_label"] == "orangutan_longcall"
        status, row = _post(base + "/api/verdict", {"id": first, "verdict": "relabel", "label": "hornbill_rhino"})
        assert status == 400 and "hornbill_rhino" in row["error"]     # the embedded bundle's, not this site's


def test_verdicts_export_as_csv(review_db, tmp_path):
    import csv
    import subprocess
    import sys
    db, _ = review_db
    rows = reviews.list_detections(db, order="time")
    reviews.add_verdict(db, rows[0]["id"], "wrong", "ann")
    reviews.add_verdict(db, rows[1]["id"], "relabel", "bob", new_label="great_argus")
    reviews.add_verdict(db, rows[0]["id"], "unsure", "bob")      # supersedes ann's
    out = tmp_path / "verdicts.csv"
    result = subprocess.run([sys.executable, "-m", "edgemon", "review", "--db", str(db), "--export", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    with out.open() as f:
        exported = list(csv.DictReader(f))
    # A newcomer trial: superseded verdicts were listed like current ones; `current` tells them.
    assert [(r["source"], r["start_s"], r["verdict"], r["new_label"], r["reviewer"], r["device_id"], r["current"])
            for r in exported] == [
        ("S01/20240501_060000.WAV", "2.0", "wrong", "", "ann", "S01", "0"),
        ("S01/20240501_060000.WAV", "10.0", "relabel", "great_argus", "bob", "S01", "1"),
        ("S01/20240501_060000.WAV", "2.0", "unsure", "", "bob", "S01", "1")]
    # A verdict on a detection a reanalysis dropped: the page and precision leave it out, and the
    # csv said current 1 (a review)
    import sqlite3
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM detections WHERE id = ?", [rows[1]["id"]])
    out = io.StringIO()
    reviews.write_reviews_csv(db, out)
    assert [r["current"] for r in csv.DictReader(io.StringIO(out.getvalue()))] == ["0", "0", "1"]


def test_exported_verdicts_carry_the_detections_local_start_with_a_time_zone(review_db, tmp_path):
    """A newcomer trial: the detections export had start_local, the verdicts' csv only UTC."""
    import subprocess
    import sys
    db, _ = review_db
    reviews.add_verdict(db, reviews.list_detections(db, order="time")[0]["id"], "correct", "ann")
    out = tmp_path / "v.csv"
    done = subprocess.run([sys.executable, "-m", "edgemon", "review", "--db", str(db), "--export", str(out),
                           "--timezone", "Asia/Kuching"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["start_utc"], r["start_local"]) for r in rows] == [
        ("2024-05-01T06:00:02.000Z", "2024-05-01T14:00:02.000+08:00")]
    plain = io.StringIO()
    reviews.write_reviews_csv(db, plain)
    assert [r["start_local"] for r in csv.DictReader(io.StringIO(plain.getvalue()))] == [""]


def test_an_output_that_is_the_database_is_refused_and_the_database_kept(review_db, tmp_path):
    """`--export v.db` (or `export-detections --output v.db`) wrote CSV over the database and said
    it had exported: every detection and verdict gone."""
    import subprocess
    import sys
    db, _ = review_db
    reviews.add_verdict(db, reviews.list_detections(db, order="time")[0]["id"], "wrong", "ann")
    before = db.read_bytes()
    (tmp_path / "link.db").symlink_to(db)
    for command in (["review", "--db", str(db), "--export"], ["export-detections", "--db", str(db), "--output"],
                    ["export-detections", "--db", str(db), "--output", str(tmp_path / "x.csv"), "--coverage"]):
        for target in (db, tmp_path / "link.db"):
            result = subprocess.run([sys.executable, "-m", "edgemon", *command, str(target)],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 1, (command, result.stderr)
            assert result.stderr.strip().splitlines()[-1] == (
                f"error: {command[-1]} {target} is the detections database {db}: choose another file (nothing was written)")
    assert db.read_bytes() == before and not (tmp_path / "x.csv").exists()
    # SQLite keeps its journal beside the real file: named through a link, that one is refused too.
    result = subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(tmp_path / "link.db"),
                             "--output", f"{db}-wal"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "is the detections database" in result.stderr
    assert not Path(f"{db}-wal").exists() or not Path(f"{db}-wal").read_bytes().startswith(b"id,")


def test_another_tools_sqlite_file_or_an_empty_one_is_refused_and_left_as_it_was(tmp_path):
    """`review` added edgemon's 16 tables to any SQLite file it was given (export-detections refused it)."""
    import subprocess
    import sys
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE foo (x)")
    (tmp_path / "empty.db").write_bytes(b"")
    for path in (other, tmp_path / "empty.db"):
        before = path.read_bytes()
        for extra in (["--export", "-"], ["--port", "1"]):   # the page refuses it before binding a port
            result = subprocess.run([sys.executable, "-m", "edgemon", "review", "--db", str(path), *extra],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == (
                f"error: {path}: not an edgemon database (no detections table); nothing was changed"), result.stderr
        assert path.read_bytes() == before


def test_recordings_or_clips_that_are_not_directories_are_refused(review_db, tmp_path):
    import subprocess
    import sys
    db, _ = review_db
    for option, path, why in (("--recordings", tmp_path / "nowhere", "no such directory"),
                              ("--clips", tmp_path / "nowhere", "no such directory"),
                              ("--recordings", db, "not a directory")):
        result = subprocess.run([sys.executable, "-m", "edgemon", "review", "--db", str(db), option, str(path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == f"error: {option} {path}: {why}"


def test_verdicts_export_reads_only(review_db, monkeypatch):
    """A database on read-only storage exports its verdicts (the export opened it to write)."""
    db, _ = review_db
    reviews.add_verdict(db, reviews.list_detections(db, order="time")[0]["id"], "wrong", "ann")

    def no_writer(*args, **kwargs):
        raise AssertionError("the export opened the database to write")

    monkeypatch.setattr(reviews, "Store", no_writer)
    out = io.StringIO()
    assert reviews.write_reviews_csv(db, out) == 1 and "wrong" in out.getvalue()


def test_the_verdicts_csv_neutralises_formulas(review_db):
    """Found in review: the verdicts CSV wrote free text (the reviewer) as it was."""
    import io

    db, _ = review_db
    reviews.add_verdict(db, reviews.list_detections(db, order="time")[0]["id"], "wrong",
                        '=HYPERLINK("http://evil.example/x","click")')
    out = io.StringIO()
    reviews.write_reviews_csv(db, out)
    assert "'=HYPERLINK" in out.getvalue() and ",=HYPERLINK" not in out.getvalue()


def test_a_port_in_use_or_out_of_range_is_one_line_not_a_traceback(tmp_path):
    """uvicorn logged a taken port and exited with status 3; a port over 65535 was a traceback."""
    import socket

    from typer.testing import CliRunner

    from edgemon.cli import app

    db, _ = make_review_db(tmp_path)
    runner = CliRunner()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = runner.invoke(app, ["review", "--db", str(db), "--port", str(port)])
    assert busy.exit_code == 1 and busy.output.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    wrong = runner.invoke(app, ["review", "--db", str(db), "--port", "99999"])
    assert wrong.exit_code == 2 and "--port" in wrong.output


def test_a_sound_judged_under_another_bundle_says_so_and_comes_after_the_rest(review_db):
    """Found by a newcomer trial: after reanalyse the same sounds came back unreviewed under the
    new bundle, with nothing to say they had been judged, and first in the review order."""
    db, recordings = review_db
    old = reviews.list_detections(db, order="time")
    judged = old[0]
    reviews.add_verdict(db, judged["id"], "relabel", "tester", new_label="great_argus",
                        labels=("gibbon_duet", "great_argus", "hornbill_helmeted", "hornbill_rhino"))
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        stored = [dict(r) for r in conn.execute("SELECT * FROM detections")]
    with Store(db) as store:      # as reanalyse stores a second bundle's detections beside the first's
        store.insert_detections([Detection(**{**{k: r[k] for k in Detection.__dataclass_fields__},
                                              "bundle_id": "bundle-new", "start_s": r["start_s"] + 0.5,
                                              "end_s": r["end_s"] + 0.5}) for r in stored])
    new = reviews.list_detections(db, bundle_id="bundle-new", order="teach")
    said = [r for r in new if r["earlier"]]
    assert len(said) == 1 and said[0]["source"] == judged["source"]
    assert said[0]["earlier"] == f"{judged['label']} judged as great_argus under {BUNDLE_ID}"
    assert new[-1]["id"] == said[0]["id"]          # it teaches least: last among the unreviewed
    assert not any(r["earlier"] for r in reviews.list_detections(db, bundle_id=BUNDLE_ID))
    with review_server(db, recordings) as (base, _):
        page = _get(base + "/?bundle=bundle-new")[2].decode()
    assert page.count("earlier: ") == 1 and f"judged as great_argus under {BUNDLE_ID}" in page
    assert 'class="bundle"' not in page                       # one bundle chosen: no need to name it
    with review_server(db, recordings) as (base, _):
        every = _get(base + "/")[2].decode()
    # all bundles shown: each card names its own (an upgrade trial saw each call twice, unnamed)
    assert every.count('">bundle-new</span>') == len(stored) and every.count(f'">{BUNDLE_ID}</span>') >= 1
    # A detection that only touches the judged one's edge (adjacent events share a frame) is
    # another sound: nothing was said of it (a newcomer trial saw a neighbour's verdict shown).
    with Store(db) as store:
        store.insert_detections([Detection(**{**{k: judged[k] for k in ("source", "label", "confidence", "votes")},
                                              **{k: v for k, v in stored[0].items() if k in ("device_id", "start_utc",
                                                 "end_utc", "time_source", "clock_suspect")},
                                              "bundle_id": "bundle-next", "start_s": judged["end_s"] - 0.032,
                                              "end_s": judged["end_s"] + 3.968})])
    [touching] = reviews.list_detections(db, bundle_id="bundle-next")
    assert touching["earlier"] is None
    # Another reviewer's later 'unsure' supersedes the verdict: nothing to say, and it is not put
    # last (a review: superseded verdicts still spoke).
    time.sleep(0.002)
    reviews.add_verdict(db, judged["id"], "unsure", "second")
    new = reviews.list_detections(db, bundle_id="bundle-new", order="teach")
    assert not any(r["earlier"] for r in new)
    assert [r["id"] for r in new] == [r["id"] for r in sorted(new, key=lambda r: (-r["priority"], r["id"]))]


def test_a_filter_naming_nothing_here_is_refused_not_an_empty_page(review_db):
    """A newcomer trial: `/?bundle=nope`, `/?label=unicorn`, `/?day=notaday` and
    `/charts?bundle=nope` answered 200 with an empty page, read as "no detections of it"."""
    db, recordings = review_db
    with review_server(db, recordings) as (base, _):
        for path, status, words in (("/?bundle=nope", 404, "unknown bundle id 'nope'"),
                                    ("/?label=unicorn", 404, "no detection of 'unicorn'"),
                                    ("/?day=notaday", 400, "YYYY-MM-DD"),
                                    ("/charts?bundle=nope", 404, "unknown bundle id 'nope'")):
            got, _, body = _get(base + path)
            assert got == status and words.encode() in body, (path, got, body[:200])
        assert _get(base + "/?day=2031-01-01")[0] == 200          # a day without detections is a fine question
        assert _get(base + "/?label=great_argus&bundle=default-test")[0] == 200
        # A bundle that analysed the recordings and found nothing has hours to chart (a review: 404).
        with Store(db) as store:
            for source in sorted({d[0] for d in DETECTIONS}):
                store.replace_detections(source, "quiet-bundle", [], 20.0)
        got, _, body = _get(base + "/charts?bundle=quiet-bundle")
        assert got == 200 and b"h analysed" in body, body[:300]


def test_the_next_page_follows_on_from_a_page_judged_meanwhile(review_db):
    """A review: pages were cut by OFFSET from an order that judging changes (the teach order puts
    judged rows last, "unreviewed only" drops them), so after a page was judged "next" showed what
    had been ranked 101-150 and the 50 between were never shown."""
    db, recordings = review_db
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        first = dict(conn.execute("SELECT * FROM detections ORDER BY id LIMIT 1").fetchone())
    rng = np.random.default_rng(0)
    with Store(db) as store:
        store.insert_detections([Detection(**{**{k: first[k] for k in Detection.__dataclass_fields__},
                                              "start_s": 100.0 + i, "end_s": 104.0 + i,
                                              "confidence": float(rng.uniform(0.3, 0.9))}) for i in range(146)])
    for order, unreviewed in (("teach", False), ("teach", True), ("confidence", True)):
        as_of = reviews.utc_iso(reviews.dt.datetime.now(reviews.dt.timezone.utc))
        ranked = [r["id"] for r in reviews.list_detections(db, order=order, unreviewed_only=unreviewed,
                                                           limit=150, as_of=as_of)]
        page1 = reviews.list_detections(db, order=order, unreviewed_only=unreviewed, limit=50, as_of=as_of)
        time.sleep(0.002)
        for row in page1:
            reviews.add_verdict(db, row["id"], "correct", f"{order}-{unreviewed}")
        page2 = reviews.list_detections(db, order=order, unreviewed_only=unreviewed, limit=50, offset=50,
                                        as_of=as_of)
        assert [r["id"] for r in page2] == ranked[50:100], (order, unreviewed)
        back = reviews.list_detections(db, order=order, unreviewed_only=unreviewed, limit=50, as_of=as_of)
        assert [r["verdict"] for r in back] == ["correct"] * 50     # the verdicts shown are the latest
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM reviews")
    with review_server(db, recordings) as (base, _):
        page = _get(base + "/?order=teach&unreviewed=1")[2].decode()
    [link] = re.findall(r'href="\?([^"]*)">next', page)
    assert "offset=50" in link and "as_of=" in link and link.count("as_of") == 1


def test_charts_place_each_quarter_hour_once_not_each_minute_of_live_coverage(tmp_path, monkeypatch):
    """A year of per-minute live coverage is 525 600 rows: each was spread over its hours in Python
    (2.4 s of the charts page on a desktop, many times that on a Pi). SQLite sums them per UTC
    quarter hour, which no zone's hour boundary cuts, and each quarter is placed once."""
    from contextlib import closing
    from zoneinfo import ZoneInfo

    from edgemon.review import charts
    from edgemon.storage.store import Store

    db = tmp_path / "live.db"
    with Store(db):
        pass
    with closing(sqlite3.connect(db)) as conn:
        minutes = [f"2024-05-01T{m // 60:02d}:{m % 60:02d}:00.000Z" for m in range(6 * 60)]   # 00:00-06:00Z
        conn.executemany("INSERT INTO coverage (source, minute_utc, device_id, analysed_s, end_utc, updated_at) "
                         "VALUES ('mic', ?, 'r', 30.0, ?, ?)", [(m, m, m) for m in minutes])
        conn.commit()
    placed = []
    real = charts.local
    monkeypatch.setattr(charts, "local", lambda when, zone: placed.append(when) or real(when, zone))
    by_hour, by_day = charts.effort_hours(db, zone=ZoneInfo("Asia/Kolkata"))   # UTC+5:30
    assert len(placed) == 6 * 4
    # 00:00-06:00Z is 05:30-11:30 there: half hours at each end, 30 s of every minute analysed.
    assert by_hour == pytest.approx({5: 0.25, 6: 0.5, 7: 0.5, 8: 0.5, 9: 0.5, 10: 0.5, 11: 0.25})
    assert by_day == pytest.approx({"2024-05-01": 3.0})


def test_a_verdict_and_the_charts_page_read_no_days(review_db, monkeypatch):
    """The day filter's days read every detection's time (a year's: a scan and each quarter hour
    placed in its zone); a verdict, which needs the labels only, read them at every key press,
    and the charts page and the precision to check a bundle id."""
    import asyncio

    def no_days(*args, **kwargs):
        raise AssertionError("days read")

    db, _ = review_db
    app = create_app(ReviewConfig(db=db, reviewer="tester"))
    monkeypatch.setattr(reviews, "days_and_labels", no_days)

    def call(method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        sent, answers = [{"type": "http.request", "body": body, "more_body": False}], []

        async def receive():
            return sent.pop(0) if sent else {"type": "http.disconnect"}

        async def send(message):
            answers.append(message)

        path, _, query = path.partition("?")
        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
                 "query_string": query.encode(), "scheme": "http", "server": ("127.0.0.1", 8000),
                 "client": ("127.0.0.1", 5000), "http_version": "1.1",
                 "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]}
        asyncio.run(app(scope, receive, send))
        return answers[0]["status"], b"".join(m.get("body", b"") for m in answers[1:])

    ids = [row["id"] for row in reviews.list_detections(db, order="time")]
    status, body = call("POST", "/api/verdict", json.dumps({"id": ids[0], "verdict": "correct"}).encode())
    assert status == 200, body
    bundle = reviews.list_detections(db)[0]["bundle_id"]
    assert call("GET", f"/charts?bundle={bundle}")[0] == 200
    assert call("GET", f"/api/precision?bundle={bundle}")[0] == 200


@contextlib.contextmanager
def served_in_process(db: Path, recordings: Path):
    """The review app on a free port in this process (so a test can patch what it calls); its base URL."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ReviewConfig(db=db, recordings=recordings, port=port)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert poll_until(lambda: server.started, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_excerpts_are_decoded_a_few_at_a_time(review_db, monkeypatch):
    """Found by the thirtieth session's review: a page of 50 detections asks for its spectrograms
    together, and the server's worker threads decoded them all at once (up to a minute of audio
    each, ~100 MB at an AudioMoth's 384 kHz, on a Pi). At most ``DECODES_AT_ONCE`` now; the rest wait."""
    import threading

    import edgemon.review.app as review_app

    db, recordings = review_db
    inside, most = [0], [0]
    lock = threading.Lock()

    def slow_excerpt(*args, **kwargs):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.3)   # long enough for every request to be in flight together
        with lock:
            inside[0] -= 1
        return read_excerpt(*args, **kwargs)

    monkeypatch.setattr(review_app, "read_excerpt", slow_excerpt)
    with served_in_process(db, recordings) as base:
        ids = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM detections")]
        results = []
        asks = [threading.Thread(target=lambda i=i: results.append(_get(f"{base}/detections/{i}/spectrogram.png")[0]))
                for i in ids * 2]
        for ask in asks:
            ask.start()
        for ask in asks:
            ask.join(timeout=30)
    assert results == [200] * len(asks), results
    assert most[0] == review_app.DECODES_AT_ONCE, most[0]


def test_a_request_that_gets_no_turn_to_decode_is_told_the_page_is_busy(review_db, monkeypatch):
    """A review: with two decodes stuck on a hung mount, every later excerpt waited for ever, then
    every worker thread, then the page itself. A request now waits ``DECODE_WAIT_S`` and gets a 503."""
    import threading

    import edgemon.review.app as review_app

    db, recordings = review_db
    hung, entered = threading.Event(), threading.Semaphore(0)

    def hung_excerpt(*args, **kwargs):
        entered.release()
        hung.wait(30)   # a read on a mount that does not answer
        return read_excerpt(*args, **kwargs)

    monkeypatch.setattr(review_app, "read_excerpt", hung_excerpt)
    monkeypatch.setattr(review_app, "DECODE_WAIT_S", 0.5)
    try:
        with served_in_process(db, recordings) as base:
            ids = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM detections")]
            stuck = [threading.Thread(target=_get, args=(f"{base}/detections/{i}/audio.wav",)) for i in ids[:2]]
            for request in stuck:
                request.start()
            assert entered.acquire(timeout=10) and entered.acquire(timeout=10)   # both decodes hung
            status, _, body = _get(f"{base}/detections/{ids[2]}/spectrogram.png")
            assert status == 503 and body.startswith(b"busy: 2 excerpts are being read"), (status, body)
            assert _get(f"{base}/")[0] == 200   # the page itself still loads
            hung.set()
            for request in stuck:
                request.join(timeout=30)
            assert _get(f"{base}/detections/{ids[2]}/spectrogram.png")[0] == 200   # turns again once they end
    finally:
        hung.set()   # the hung decodes end, so the server can stop


def test_a_verdict_waiting_for_the_write_lock_holds_up_no_other_request(review_db, monkeypatch):
    """Found by a review of the review and sync packages (thirty-second session): the verdict handler is async (it reads its body as a stream)
    and stored the verdict on the server's event loop, where ``BEGIN IMMEDIATE`` waits up to the
    busy timeout (30 s) for the recorder's writer: every other request, the page and its
    spectrograms included, waited with it. The verdict now waits on a worker thread."""
    import threading

    db, recordings = review_db
    monkeypatch.setattr(reviews, "BUSY_TIMEOUT_MS", 5_000)
    ids = [row["id"] for row in reviews.list_detections(db, order="time")]
    with served_in_process(db, recordings) as base:
        writer = sqlite3.connect(db, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")   # the recorder's writer, in a long transaction
        answers = []
        judging = threading.Thread(target=lambda: answers.append(_post(f"{base}/api/verdict",
                                                                        {"id": ids[0], "verdict": "correct"})))
        try:
            judging.start()
            time.sleep(0.5)   # the verdict is waiting for the lock
            started = time.monotonic()
            status, _, _ = _get(f"{base}/static/review.css")
            waited = time.monotonic() - started
        finally:
            writer.execute("ROLLBACK")
            writer.close()
            judging.join(timeout=30)
    assert status == 200 and waited < 2.0, (status, waited)
    assert answers and answers[0][0] == 200, answers


def test_a_verdict_refused_by_another_process_holding_the_write_lock_is_a_503_to_give_again(review_db, monkeypatch):
    """A field-station trial: a verdict posted while another process held the write lock past the
    busy timeout (30 s; 0.2 s here) was a 400, "cannot store the verdict …: database is locked":
    a script (or a person) read it as refused for good. It is a 503 saying to give it again."""
    db, recordings = review_db
    monkeypatch.setattr(reviews, "BUSY_TIMEOUT_MS", 200)
    ids = [row["id"] for row in reviews.list_detections(db, order="time")]
    with served_in_process(db, recordings) as base:
        writer = sqlite3.connect(db, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            status, body = _post(f"{base}/api/verdict", {"id": ids[0], "verdict": "wrong"})
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        assert status == 503 and "give it again" in body["error"] and "locked" not in body["error"], (status, body)
        assert _post(f"{base}/api/verdict", {"id": ids[0], "verdict": "wrong"})[0] == 200
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*), max(verdict) FROM reviews").fetchone() == (1, "wrong")


def test_the_printed_url_carries_a_token_of_any_characters(review_db):
    """Found by a review of the review and sync packages (thirty-second session): the URL printed for ``--token`` was not encoded, so a token
    with '&', '#', '+' or a space opened the page as someone without it (a 401)."""
    from urllib.parse import parse_qs, urlsplit

    from edgemon.review.app import page_url

    token = "a b&c#d+e%f"
    url = page_url(ReviewConfig(db=review_db[0], host="0.0.0.0", token=token))
    assert parse_qs(urlsplit(url).query)["token"] == [token], url


def _corrupt_all_but_the_schema(db: Path) -> None:
    """Overwrite every page of ``db`` but its first (the schema) with garbage, as a failing SD card
    does: it opens, and every table and index read fails."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    with open(db, "r+b") as f:
        f.seek(page_size)
        f.write(b"\xff" * (db.stat().st_size - page_size))


def test_a_database_gone_bad_while_the_page_is_served_is_one_line_not_a_traceback(review_db, caplog):
    """Found by a review of the review and sync packages (thirty-second session): a database removed, or a card gone bad, while the page was
    open gave every page a 500 and the terminal a traceback (the page read it outside the
    handlers' own error mapping). Now each answer and the log say it in one line."""
    db, recordings = review_db
    ids = [row["id"] for row in reviews.list_detections(db, order="time")]
    with served_in_process(db, recordings) as base:
        _corrupt_all_but_the_schema(db)
        for path in ("/", "/charts", f"/detections/{ids[0]}/audio.wav", "/api/precision"):
            status, _, body = _get(base + path)
            assert status >= 400 and b"malformed" in body and len(body.strip().splitlines()) == 1, (path, body)
        status, answer = _post(f"{base}/api/verdict", {"id": ids[0], "verdict": "correct"})
        assert status >= 400 and "malformed" in answer["error"], answer   # JSON, as the page's script reads it
        assert json.loads(_get(f"{base}/api/precision")[2])["error"]
        db.rename(db.with_suffix(".moved"))
        for path in ("/", "/charts", "/api/precision"):
            status, _, body = _get(base + path)
            assert status >= 400 and f"detections database not found: {db}".encode() in body, (path, body)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


def test_exporting_the_verdicts_of_a_damaged_database_is_one_line(review_db, tmp_path):
    """Found by a review of the review and sync packages (thirty-second session): `edgemon review --export` on a database that opens but whose
    tables cannot be read (a card gone bad) printed a traceback; the output is not written."""
    import subprocess
    import sys
    db, _ = review_db
    reviews.add_verdict(db, reviews.list_detections(db)[0]["id"], "correct", "ann")
    with contextlib.closing(sqlite3.connect(db)) as conn:   # the reviews table's page, the rest readable
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'reviews'").fetchone()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)
    out = tmp_path / "verdicts.csv"
    result = subprocess.run([sys.executable, "-m", "edgemon", "review", "--db", str(db), "--export", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot read verdicts from {db}: "), result.stderr
    assert not out.exists()


def test_detections_stored_while_the_page_is_open_do_not_push_its_rows_onto_the_next(review_db):
    """A team trial: `watch` added detections while the first page was open, the teach order ranked
    them among its rows, and "next" showed rows of the first page again."""
    db, recordings = review_db
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        first = dict(conn.execute("SELECT * FROM detections ORDER BY id LIMIT 1").fetchone())

    def stored(count: int, at: float, confidence: float) -> None:
        with Store(db) as store:
            store.insert_detections([Detection(**{**{k: first[k] for k in Detection.__dataclass_fields__},
                                                  "start_s": at + i, "end_s": at + 4.0 + i,
                                                  "confidence": confidence - i / 1000}) for i in range(count)])

    stored(96, 100.0, 0.9)
    with review_server(db, recordings) as (base, _):
        page1 = _get(base + "/?order=teach")[2].decode()
        stored(10, 500.0, 0.2)    # the recorder's next files: less confident, ranked first
        [link] = re.findall(r'href="\?([^"]*)">next', page1)
        page2 = _get(base + "/?" + link.replace("&amp;", "&"))[2].decode()
    shown1, shown2 = (re.findall(r'data-id="(\d+)"', page) for page in (page1, page2))
    assert len(shown1) == 50 and len(shown2) == 50
    assert not set(shown1) & set(shown2)
    assert "10 detection(s) stored since" in page2


def _named(base: str, token: str, name: str) -> str:
    """The cookies a browser holds after opening the page with ``?reviewer=name``."""
    import http.client
    conn = http.client.HTTPConnection(base.split("//", 1)[1], timeout=10)
    conn.request("GET", f"/?{urllib.parse.urlencode({'reviewer': name, 'order': 'time'})}",
                 headers={"X-Review-Token": token})
    response = conn.getresponse()
    assert response.status == 303 and response.getheader("location") == "/?order=time"
    cookie = response.getheader("set-cookie").split(";", 1)[0]
    conn.close()
    return cookie


def test_a_team_sharing_one_page_judges_under_each_ones_name(review_db):
    """A team trial: one page served on the field station's LAN to three reviewers stored every
    verdict under the name of whoever started it; bob's relabel replaced alice's "correct" as that
    one person changing their mind, and her verdict was gone from the export."""
    db, recordings = review_db
    with review_server(db, recordings, "--token", "tok", host="0.0.0.0") as (base, _):
        alice, bob = ({"X-Review-Token": "tok", "Cookie": _named(base, "tok", name)} for name in ("alice", "bob"))
        first = reviews.list_detections(db, order="time")[0]
        assert _post(base + "/api/verdict", {"id": first["id"], "verdict": "correct"}, alice)[1]["reviewer"] == "alice"
        assert _post(base + "/api/verdict", {"id": first["id"], "verdict": "relabel", "label": "great_argus"},
                     bob)[1]["reviewer"] == "bob"
        page = _get(base + "/?order=time", alice)[2].decode()
        assert "as alice" in page and "(by bob)" in page
        assert _get(base + "/?reviewer=%20", alice)[0] == 400
        link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
        assert _get(base + "/?reviewer=mallory", {**alice, **link})[0] == 403   # a link from another site
        anonymous = _post(base + "/api/verdict", {"id": first["id"], "verdict": "wrong"}, {"X-Review-Token": "tok"})
        assert anonymous[1]["reviewer"] == "tester"     # --reviewer, for a browser that gave no name
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT reviewer, verdict FROM reviews ORDER BY id").fetchall()
    assert stored == [("alice", "correct"), ("bob", "relabel"), ("tester", "wrong")]


def test_giving_ones_name_keeps_the_page_as_it_was_shown(review_db):
    """A review: "that's me" sent the name alone, and the page came back in its default order with
    every filter dropped, the reviewer's place in the list lost. The page's own query goes along."""
    db, recordings = review_db
    label = reviews.list_detections(db, order="time")[0]["label"]
    with review_server(db, recordings) as (base, _):
        page = _get(f"{base}/?{urllib.parse.urlencode({'order': 'time', 'label': label})}")[2].decode()
    form = re.search(r'<form class="reviewer".*?</form>', page, re.S).group(0)
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))
    assert hidden == {"order": "time", "label": label}, form


def test_the_count_of_detections_stored_since_follows_the_pages_filters(review_db):
    """A review: the page's "N detection(s) stored since" counted every new detection, another
    species' too, on a page showing one species."""
    db, _ = review_db
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        first = dict(conn.execute("SELECT * FROM detections ORDER BY id LIMIT 1").fetchone())
    upto = reviews.newest_detection_id(db)
    other = "great_argus" if first["label"] != "great_argus" else "gibbon_duet"
    with Store(db) as store:
        store.insert_detections([Detection(**{**{k: first[k] for k in Detection.__dataclass_fields__},
                                              "start_s": 900.0 + i, "end_s": 904.0 + i, "label": label})
                                 for i, label in enumerate([first["label"], other, other])])
    assert reviews.detections_since(db, upto) == 3
    assert reviews.detections_since(db, upto, label=first["label"]) == 1
    assert reviews.detections_since(db, upto, label=other) == 2
    assert reviews.detections_since(db, upto, bundle_id="another-bundle") == 0


def test_a_species_filter_sends_the_label_as_it_is_stored(review_db):
    """A trial with its own species: the species <option>s carried no value, and a browser sends an
    option's text with its spaces collapsed and trimmed, so a label with two spaces in a row was
    filtered by a label no detection has (an empty page)."""
    db, recordings = review_db
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE detections SET label = 'Tawny  Owl' WHERE label = 'great_argus'")
    conn.close()
    with review_server(db, recordings) as (base, _):
        page = _get(base + "/")[2].decode()
        species = re.search(r'<select name="label">(.*?)</select>', page).group(1)
        values = re.findall(r'<option value="([^"]*)"', species)
        assert "Tawny  Owl" in values, species
        filtered = _get(base + "/?" + urllib.parse.urlencode({"label": "Tawny  Owl"}))[2].decode()
        assert re.findall(r'data-id="(\d+)"', filtered)   # the filter the browser now sends finds them
