"""Text from outside (file names, error messages, labels) made safe where edgemon writes it.

A file name on Linux is bytes: it may hold a newline, an escape sequence or bytes that are not
UTF-8 (Python hands those over as lone surrogates, ``os.fsdecode``). Written raw, the first two
forge log lines or drive a terminal, and the third cannot be stored in SQLite at all
(``UnicodeEncodeError: surrogates not allowed``).

- ``shown``: for a log line. Control, line- and paragraph-separator and format characters
  (bidi overrides among them) and undecodable bytes appear escaped; everything else as it is.
- ``stored_name``: for the database. Valid UTF-8 text, and reversible (``name_from_stored``):
  an undecodable byte becomes ``\\xNN`` and a backslash ``\\\\``, so two different names never
  share a ledger row. Every other name, the recorders' own among them, is stored unchanged.
"""

from __future__ import annotations

import os
import re
import unicodedata

# Characters that must never reach a log line raw: C0/C1 controls (newline, ESC ...), line and
# paragraph separators, format characters (right-to-left override, zero-width ...), surrogates.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
        return ch
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if 0xDC80 <= code <= 0xDCFF:         # an undecodable file-name byte (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: object) -> str:
    """``str(value)`` fit for one log line: no raw control or format character, no raw
    undecodable byte (each appears as ``\\n``, ``\\x1b``, ``\\xe9``, ``\\u202e``)."""
    text = str(value)
    return text if text.isprintable() else "".join(map(_escape, text))


_NEEDS_STORING = re.compile("[\\\\\udc80-\udcff]")
_STORED_ESCAPE = re.compile(r"\\\\|\\x([0-9a-f]{2})")


def stored_name(name: str | os.PathLike) -> str:
    """A file-system name or path (as ``os.fsdecode`` gives it) as valid UTF-8 text for the
    database; unchanged unless it holds a backslash or bytes that are not UTF-8."""
    text = os.fsdecode(name)
    if not _NEEDS_STORING.search(text):
        return text
    raw = os.fsencode(text).replace(b"\\", b"\\\\")
    return raw.decode("utf-8", "backslashreplace")


def name_from_stored(text: str) -> str:
    """The inverse of ``stored_name``: the name as ``os.fsdecode`` would give it."""
    if "\\" not in text:
        return text
    parts, at = [], 0
    for m in _STORED_ESCAPE.finditer(text):
        parts.append(text[at:m.start()].encode())
        parts.append(b"\\" if m.group(1) is None else bytes([int(m.group(1), 16)]))
        at = m.end()
    parts.append(text[at:].encode())
    return os.fsdecode(b"".join(parts))
