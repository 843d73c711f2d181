"""Names and locales as field teams have them: a name with a newline or an escape sequence, text
that is not UTF-8 from a Latin-1 terminal, a locale whose encoding is not UTF-8. Each reaches a
person as one escaped line and a file as UTF-8, never as a traceback."""

from __future__ import annotations

import numpy as np

from edgemon.status import collect_status, format_status
from tests.conftest import hoots, tone
from tests.watch_helpers import watch_until_idle, write_wav


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
