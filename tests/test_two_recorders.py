"""Two recorders' cards under one database: AudioMoth names files by the minute they began, so two
recorders on one schedule write the same names, often of the same size. Found by a newcomer trial:
the second card replaced the first card's detections (and orphaned their reviews), and review,
adapt and reanalyse read the second card's files for the first card's detections."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from devtools.soundscapes import PART_A, PART_B, soundscape
from edgemon.errors import AudioError
from edgemon.review.excerpt import read_excerpt
from edgemon.review.reviews import detection
from tests.watch_helpers import query, watch_until_idle

REPO = Path(__file__).resolve().parents[1]
NAME = "20180301_050000.WAV"
SECONDS = 40


def card(borneo_dir: Path, root: Path, names: tuple[str, ...]) -> Path:
    """A card holding one recording named as an AudioMoth names it, exactly SECONDS long."""
    root.mkdir()
    soundscape(borneo_dir, names, root / "scape.wav")
    x, rate = soundfile.read(root / "scape.wav", dtype="float32")
    (root / "scape.wav").unlink()
    x = np.resize(x, SECONDS * rate)                    # a fixed length: both cards' files are one size
    soundfile.write(root / NAME, x, rate, subtype="PCM_16")
    return root


@pytest.fixture
def cards(borneo_dir, tmp_path) -> tuple[Path, Path, Path]:
    a = card(borneo_dir, tmp_path / "siteA", PART_A)
    b = card(borneo_dir, tmp_path / "siteB", PART_B[::-1])   # PART_B begins as PART_A does
    assert (a / NAME).stat().st_size == (b / NAME).stat().st_size
    db = tmp_path / "d.db"
    watch_until_idle(a, db)
    return a, b, db


def rows(db: Path) -> list[tuple]:
    return query(db, "SELECT id, source, start_s, label, confidence FROM detections ORDER BY id")


def test_a_second_card_with_the_same_names_leaves_the_first_cards_detections_alone(cards, caplog):
    a, b, db = cards
    first = rows(db)
    assert first, "the first card's recording holds calls"
    caplog.set_level(logging.WARNING)
    watcher = watch_until_idle(b, db)
    assert rows(db) == first
    assert query(db, "SELECT path FROM files") == [(str(a / NAME),)]     # the ledger still says which file
    assert watcher.others == {b.resolve() / NAME}
    assert any("another recording than the one analysed" in r.getMessage() and "--db" in r.getMessage()
               for r in caplog.records)


def test_the_same_card_copied_elsewhere_is_still_the_same_recording(cards, tmp_path):
    a, _, db = cards
    first = rows(db)
    copy = tmp_path / "again"
    copy.mkdir()
    shutil.copyfile(a / NAME, copy / NAME)               # `cp` without -p: another mtime, same audio
    watcher = watch_until_idle(copy, db)
    assert watcher.processed == 0 and not watcher.others   # same size and audio: known, not analysed again
    assert rows(db) == first                             # same rows, same ids


def test_the_idle_summary_names_the_files_left_alone(cards):
    _, b, db = cards
    run = subprocess.run([sys.executable, "-m", "edgemon", "watch", str(b), "--db", str(db), "--until-idle",
                          "--settle-s", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().splitlines()[-1].endswith(
        "; 1 file(s) left alone: another recording was analysed under each name (one database per recorder)")


def test_review_and_reanalyse_refuse_another_recorders_file_of_the_same_size(cards):
    a, b, db = cards
    row = detection(db, rows(db)[0][0])
    assert read_excerpt(row, recordings=b).path == a / NAME     # passed over for the ledger's own file
    (a / NAME).rename(a.parent / "elsewhere.WAV")                 # the first card taken away
    with pytest.raises(AudioError, match=f"{NAME}: not the recording analysed: .*holds other audio"):
        read_excerpt(row, recordings=b)
    run = subprocess.run([sys.executable, "-m", "edgemon", "reanalyse", "--db", str(db), "--models",
                          str(REPO / "edgemon" / "models" / "default"), "--recordings", str(b), "--again"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "1 changed" in run.stderr and "holds other audio" in run.stdout + run.stderr, (run.stdout, run.stderr)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_the_digest_reads_the_audio_not_the_headers_a_recorder_rewrites(tmp_path, fmt):
    """A file analysed while still being written keeps its digest once closed: a WAV's sizes and a
    FLAC's seek table and checksum are rewritten at the end, the audio before them is not."""
    from edgemon.storage.fingerprint import fingerprint

    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, 16000 * 10).astype(np.float32)
    whole = tmp_path / f"whole.{fmt.lower()}"
    soundfile.write(whole, x, 16000, format=fmt, subtype="PCM_16")
    with_metadata = tmp_path / f"meta.{fmt.lower()}"
    with soundfile.SoundFile(with_metadata, "w", 16000, 1, format=fmt, subtype="PCM_16") as f:
        f.comment = "Recorded at 05:00:00 by AudioMoth 24E144085F256A82 " * 100   # a long header
        f.write(x)
    other = tmp_path / f"other.{fmt.lower()}"
    soundfile.write(other, rng.normal(0, 0.1, 16000 * 10).astype(np.float32), 16000, format=fmt, subtype="PCM_16")
    assert fingerprint(whole) == fingerprint(with_metadata)   # at a fixed offset these differed
    assert fingerprint(whole) is not None and fingerprint(whole) != fingerprint(other)
    short = tmp_path / f"short.{fmt.lower()}"
    soundfile.write(short, x[:8000], 16000, format=fmt, subtype="PCM_16")
    # Half a second: digested whole besides the prefixes it holds, so a later file is compared over as much.
    held = 16000 if fmt == "WAV" else len(fingerprint_bytes(short))
    assert [int(part.split(":")[0]) for part in fingerprint(short).split(",")] == sorted({4096, held} | (
        {16384} if held >= 16384 else set()))


def fingerprint_bytes(path: Path) -> bytes:
    """The audio bytes the digest reads of a FLAC: everything after its metadata blocks."""
    data = path.read_bytes()
    pos = 4
    while True:
        last, size = data[pos] & 0x80, int.from_bytes(data[pos + 1:pos + 4], "big")
        pos += 4 + size
        if last:
            return data[pos:]


def test_a_short_file_after_a_long_one_under_its_name_is_told_apart(cards, tmp_path):
    """Found by a second review: a second card's file holding less audio than the first card's
    digest covered could not be compared, and replaced the first card's detections."""
    a, _, db = cards
    first = rows(db)
    short = tmp_path / "siteC"
    short.mkdir()
    soundfile.write(short / NAME, np.random.default_rng(5).normal(0, 0.1, 16000).astype(np.float32), 16000,
                    subtype="PCM_16")
    watcher = watch_until_idle(short, db)
    assert watcher.others == {short.resolve() / NAME} and rows(db) == first


def test_a_short_second_recording_under_a_name_is_told_apart_too(cards_short):
    """Found by a review: a file under 68 KiB had no digest, so a short file of another card
    replaced the first card's detections (and a short first recording let any later one in)."""
    a, b, db = cards_short
    first = rows(db)
    watcher = watch_until_idle(b, db)
    assert watcher.others == {b.resolve() / NAME} and rows(db) == first


@pytest.fixture
def cards_short(tmp_path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(1)
    a, b = tmp_path / "siteA", tmp_path / "siteB"
    for root in (a, b):
        root.mkdir()
        soundfile.write(root / NAME, rng.normal(0, 0.1, 16000).astype(np.float32), 16000, subtype="PCM_16")
    db = tmp_path / "d.db"
    watch_until_idle(a, db)
    assert query(db, "SELECT fingerprint LIKE '4096:%,16384:%,32000:%' FROM files") == [(1,)]
    return a, b, db


def test_reanalyse_passes_over_another_cards_file_for_the_ledgers_own(cards):
    """Found by a review: reanalyse refused the recording when --recordings held another card's
    file of its name, though the ledger's own file was there (the review page used it)."""
    from edgemon.files.reanalyse import reanalyse
    from tests.watch_helpers import analyzer

    a, b, db = cards
    result = reanalyse(db, analyzer(), recordings=b, again=True)   # watch's own bundle: again
    assert (result.files, result.changed, result.missing) == (1, [], [])


def test_a_recording_grown_since_is_heard_on_the_review_page_but_not_reanalysed(cards):
    """A recording still being written when it was analysed holds what was analysed: the page plays
    it (it did before digests were compared); reanalyse would replace detections of a part it
    never analysed, so it lists it as changed."""
    from edgemon.files.reanalyse import reanalyse
    from tests.watch_helpers import analyzer

    a, _, db = cards
    x, rate = soundfile.read(a / NAME, dtype="float32")
    soundfile.write(a / NAME, np.concatenate([x, x[: 5 * rate]]), rate, subtype="PCM_16")
    row = detection(db, rows(db)[0][0])
    assert read_excerpt(row).path == a / NAME
    result = reanalyse(db, analyzer(), again=True)
    assert result.files == 0 and len(result.changed) == 1 and "when analysed" in result.changed[0]


def test_a_file_left_alone_is_named_by_status_and_said_once(cards, caplog):
    """Found by a review: status counted it as waiting forever, and every start warned again."""
    from edgemon.status import collect_status

    _, b, db = cards
    caplog.set_level(logging.WARNING)
    watch_until_idle(b, db)
    again = watch_until_idle(b, db)
    assert again.others == {b.resolve() / NAME}                  # still left alone, and counted
    said = [r for r in caplog.records if "another recording than the one analysed" in r.getMessage()]
    assert len(said) == 1
    status = collect_status(db, directory=b)
    assert status["backlog"]["waiting"] == 0 and status["backlog"]["other_recordings"] == 1
    assert any("1 file(s) left alone" in p for p in status["problems"])
    (b / NAME).unlink()                                          # moved away, as the advice says
    assert collect_status(db)["backlog"]["other_recordings"] == 0
