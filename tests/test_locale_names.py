"""Names and locales as field teams have them: a name with a newline or an escape sequence, text
that is not UTF-8 from a Latin-1 terminal, a locale whose encoding is not UTF-8. Each reaches a
person as one escaped line and a file as UTF-8, never as a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgemon.files.reanalyse import reanalyse
from edgemon.review.excerpt import read_excerpt
from edgemon.review.reviews import detection
from edgemon.status import collect_status, format_status
from tests.conftest import hoots, tone
from tests.review_helpers import review_server
from tests.watch_helpers import analyzer, query, watch_until_idle, write_wav

REPO = Path(__file__).resolve().parents[1]


def edgemon(*args: str | bytes, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command line as a shell runs it: arguments as bytes, output as bytes."""
    return subprocess.run([sys.executable, "-m", "edgemon", *args], cwd=REPO, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def recording(path, seed: int = 0):
    """Faint noise then hoots the embedded bundle labels (8 s), so the file has detections."""
    return write_wav(path, np.concatenate([tone(0, 1.0, seed=seed), hoots(7.0, seed=seed + 1)]))


def test_status_shows_names_with_a_newline_or_escape_sequence_escaped_on_their_own_line(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "new\nline.WAV", seed=1)            # no stamp: timed by its mtime, a problem
    recording(root / "z\x1b]0;title\x07.WAV", seed=3)     # the last file: an OSC sequence
    watch_until_idle(root, db)
    text = format_status(collect_status(db))
    lines = text.splitlines()
    assert all(line.isprintable() for line in lines), [line for line in lines if not line.isprintable()]
    assert "new\\nline.WAV" in text and "z\\x1b]0;title\\x07.WAV" in text
    assert all(line[:1] not in (" ", "") and ":" in line[:18] for line in lines)   # every line a field


def test_an_error_naming_an_escape_sequence_or_latin1_bytes_is_one_printable_line(tmp_path):
    missing = os.fsencode(tmp_path) + b"/caf\xe9\x1b]0;pwned\x07.db"   # typed in a Latin-1 terminal
    done = edgemon("export-detections", "--db", missing)
    assert done.returncode == 1
    line = done.stderr.decode("utf-8")
    assert line.startswith("error: ") and line.count("\n") == 1 and line.rstrip("\n").isprintable(), line
    assert "caf\\xe9\\x1b]0;pwned\\x07.db" in line


@pytest.fixture(scope="module")
def odd_names_db(tmp_path_factory):
    """A database of two recordings by a recorder named 'Ünit-7 façade': one named as macOS
    writes 'Régión' (NFD), one with a comma, a semicolon and quotes in its name."""
    tmp = tmp_path_factory.mktemp("odd")
    root, db = tmp / "rec", tmp / "d.db"
    recording(root / "Re\u0301gio\u0301n 20180301_060000.WAV", seed=1)
    recording(root / 'site, 7; "a" 20180302_060000.WAV', seed=3)
    watch_until_idle(root, db, device_id="Ünit-7 façade")
    return db


@pytest.mark.parametrize("locale", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONUTF8": "0"},
                                    {"PYTHONIOENCODING": "latin-1"}])
@pytest.mark.parametrize("fmt", ["csv", "birdnet", "jsonl"])
def test_an_export_to_standard_output_is_utf8_whatever_the_locale(odd_names_db, tmp_path, locale, fmt):
    to_file = tmp_path / "out.txt"
    assert edgemon("export-detections", "--db", str(odd_names_db), "--format", fmt, "-q",
                   "--output", str(to_file)).returncode == 0
    piped = edgemon("export-detections", "--db", str(odd_names_db), "--format", fmt, "-q", env=locale)
    assert piped.returncode == 0 and not piped.stderr, piped.stderr.decode("utf-8", "replace")[-400:]
    assert piped.stdout == to_file.read_bytes() and "Re\u0301gio\u0301n".encode() in piped.stdout


def test_a_cursor_name_typed_in_a_latin1_terminal_is_refused_in_one_line_naming_it(odd_names_db, tmp_path):
    out = tmp_path / "new.csv"
    done = edgemon("export-detections", "--db", str(odd_names_db), "--cursor", b"caf\xe9", "--output", str(out))
    said = done.stderr.decode("utf-8")
    assert done.returncode == 1 and "Traceback" not in said, said[-600:]
    assert said.startswith("error: export cursor name 'caf\\xe9' is not UTF-8") and said.count("\n") == 1
    assert not out.exists()
    again = edgemon("export-detections", "--db", str(odd_names_db), "--cursor", "café", "--output", str(out))
    assert again.returncode == 0 and out.read_text(encoding="utf-8").count("\n") > 1


def test_recordings_named_in_latin1_or_with_a_backslash_are_found_again_by_review_and_reanalyse(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    os.makedirs(root)
    # a card written by a camera or PC with Latin-1 names; each its own recording
    os.rename(recording(tmp_path / "a.WAV", seed=1), os.fsencode(root) + b"/caf\xe9 20180301_060000.WAV")
    recording(root / "back\\slash 20180302_060000.WAV", seed=3)
    watch_until_idle(root, db)
    ids = [row[0] for row in query(db, "SELECT min(id) FROM detections GROUP BY source")]
    assert len(ids) == 2
    for recordings in (None, root):   # by the ledger's path, and under --recordings
        for detection_id in ids:
            excerpt = read_excerpt(detection(db, detection_id), recordings=recordings)
            assert excerpt.path.is_file() and len(excerpt.samples) > 0
    again = reanalyse(db, analyzer(), recordings=root, again=True)
    assert again.files == 2 and again.missing == [] and again.failed == [] and again.changed == []


def test_the_review_page_isolates_a_name_with_a_right_to_left_override(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "rtl\u202eVAW.exe 20180301_060000.WAV", seed=1)   # would reverse '@ 1.0–5.0 s' after it
    watch_until_idle(root, db)
    with review_server(db, root) as (base, _):
        with urllib.request.urlopen(base + "/") as page:
            html = page.read().decode("utf-8")
    sources = re.findall(r'<span class="source">(.*?) @', html)
    assert sources and all(s == "<bdi>rtl\\u202eVAW.exe 20180301_060000.WAV</bdi>" for s in sources), sources
    assert "\u202e" not in html


def test_a_device_id_in_bytes_the_locale_cannot_decode_is_refused_naming_the_encoding():
    typed = edgemon("config", "--device-id", b"caf\xe9")            # a Latin-1 terminal
    said = typed.stderr.decode("utf-8")
    assert typed.returncode == 2 and said.count("\n") == 1, said
    assert "'caf\\xe9' holds bytes that are not text in this locale's encoding (utf-8)" in said
    ascii_locale = edgemon("config", env={"LC_ALL": "C", "PYTHONUTF8": "0", "EDGEMON_DEVICE_ID": "Ünit"})
    said = ascii_locale.stderr.decode("utf-8")
    assert ascii_locale.returncode == 1 and said.count("\n") == 1, said
    assert "EDGEMON_DEVICE_ID: '\\xc3\\x9cnit' holds bytes that are not text in this locale's encoding (ascii)" in said
