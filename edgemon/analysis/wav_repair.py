"""A WAV whose header libsndfile cannot use, read through a header rewritten from what is on disk.

Two headers in the field hold audio that libsndfile will not give back:

- **data size 0**: AudioMoth writes the sizes when it closes a file, so a file it never closed
  (the battery died, the card was pulled) says its data chunk is empty, and libsndfile reads
  0 samples from minutes of audio (so does an RF64 never closed: its ``ds64`` chunk says 0);
- **a chunk before ``data`` without its pad byte** (an odd-length GUANO chunk from some writers):
  libsndfile finds no ``data`` chunk and refuses the file;
- **a data size far short of the audio after it** (``declared_short``): a Frontier Labs BAR that
  lost power left the 44 it writes first in a file it had pre-allocated (known problem FL003),
  and libsndfile reads 22 samples from hours of audio;
- **sizes 0xFFFFFFFF over more than 4 GiB of audio**: a RIFF cannot say more, so libsndfile
  itself (soundfile's ``WAV``), sox and ffmpeg leave all ones in a recording that outgrew it (an
  hour and a half at 384 kHz), and libsndfile reads only its first 4 GiB.

``repaired`` presents such a file as a clean RIFF (an RF64 past 4 GiB) of its own ``fmt `` chunk
and every whole frame from the start of its ``data`` chunk to end of file; the audio bytes are read from the file as
they are asked for, so memory stays bounded however long the recording.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

from edgemon.analysis.containers import wav_chunks

_MAX_DATA = 0xFFFFFFFF - 1024   # what a RIFF size field can say, less room for the header
_UNSIZED = 0xFFFFFFFF           # a RIFF size a writer leaves when the audio outgrew it (or was never sized)


class _Spliced(io.RawIOBase):
    """``header`` followed by ``length`` bytes of ``f`` from ``offset``: one seekable stream."""

    def __init__(self, header: bytes, f, offset: int, length: int):
        self._header, self._f, self._offset, self._length = header, f, offset, length
        self._pos = 0
        # libsndfile reads through a callback that swallows exceptions and takes them for the
        # end of the audio: a card's read error is kept here and raised by ``check`` instead.
        self.failed: OSError | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        end = len(self._header) + self._length
        self._pos = max(0, min(end, {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: end}[whence] + pos))
        return self._pos

    def readinto(self, buffer) -> int:
        view, done = memoryview(buffer).cast("B"), 0
        if self._pos < len(self._header):
            part = self._header[self._pos:self._pos + len(view)]
            view[:len(part)] = part
            done = len(part)
            self._pos += done
        data_pos = self._pos - len(self._header)
        want = min(len(view) - done, self._length - data_pos)
        if want > 0 and self.failed is None:
            try:
                self._f.seek(self._offset + data_pos)
                got = self._f.readinto(view[done:done + want]) or 0
            except OSError as exc:
                self.failed, got = exc, 0
            done += got
            self._pos += got
        return done

    def close(self) -> None:
        self._f.close()
        super().close()


def check(stream) -> None:
    """Raise the read error a rewritten-header ``stream`` met, if any (None: an ordinary file)."""
    failed = getattr(getattr(stream, "raw", None), "failed", None)
    if failed is not None:
        raise failed


def declared_short(declared: int, held: int, chunk_after: bool) -> bool:
    """Whether a data chunk declaring ``declared`` bytes, ``held`` bytes from its start to end of
    file and no chunk found after it (``chunk_after``), was never finalised though its size is
    not 0: more is left after what it declares than it declares. A finished WAV ends at its data,
    or goes on with chunks (LIST, GUANO), or with a little padding; not with more audio than it
    holds."""
    return 0 < declared < held - declared and not chunk_after


def _layout(f) -> tuple[bytes, int, int, bool] | None:
    """(fmt body, data offset, declared data size, whether a chunk follows the data) of the
    RIFF/WAVE file ``f``, or None."""
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:] != b"WAVE":
        return None
    fmt, data, chunk_after = None, None, False
    for chunk_id, body_at, size in wav_chunks(f):
        chunk_after = chunk_after or data is not None
        if chunk_id == b"fmt " and fmt is None and 16 <= size <= 1024:
            fmt = f.read(size)
        elif chunk_id == b"data" and data is None:
            data = (body_at, size)
    if fmt is None or data is None or len(fmt) < 16:
        return None
    return fmt, data[0], data[1], chunk_after


def _header(fmt_chunk: bytes, length: int, block_align: int) -> bytes:
    """A RIFF header of ``fmt_chunk`` and a ``data`` chunk of ``length`` bytes; an RF64 one (its
    sizes in a ``ds64`` chunk, EBU Tech 3306) when a RIFF's 32-bit sizes cannot say them."""
    if length <= _MAX_DATA:
        return b"RIFF" + struct.pack("<I", 4 + len(fmt_chunk) + 8 + length) + b"WAVE" + fmt_chunk + \
            b"data" + struct.pack("<I", length)
    ds64 = b"ds64" + struct.pack("<IQQQI", 28, 4 + 36 + len(fmt_chunk) + 8 + length, length, length // block_align, 0)
    return b"RF64" + struct.pack("<I", _UNSIZED) + b"WAVE" + ds64 + fmt_chunk + b"data" + struct.pack("<I", _UNSIZED)


def repaired(path: str | Path, always: bool = False):
    """A binary file object reading the WAV at ``path`` through a rewritten header, and why; or
    (None, None) when it needs none (``always``: rewrite whenever the layout can be read, for a
    file libsndfile refused) or cannot be read so (no ``fmt `` or ``data`` chunk, no whole frame)."""
    try:
        f = open(os.fsencode(Path(path)), "rb")
    except OSError:
        return None, None   # the decoder says why, in the words a person acts on
    try:
        try:
            layout = _layout(f)
        except OSError:
            layout = None   # a card failing under the read: the decoder meets it too, and says so
        if layout is None:
            f.close()
            return None, None
        fmt, offset, declared, chunk_after = layout
        held = os.fstat(f.fileno()).st_size - offset
        block_align = struct.unpack("<H", fmt[12:14])[0] or 1
        short = declared_short(declared, held, chunk_after)
        # libsndfile stops such a file at 4 GiB: a 1.6 h recording at 384 kHz lost its last 168 s
        # (the call in them too), and its length was stored as 5592 s, with no word of it.
        outgrown = declared == _UNSIZED and held > _UNSIZED
        # Where the header's own size is plausible, it ends the audio (chunks may follow it).
        usable = declared if 0 < declared <= held and declared != _UNSIZED and not short else held
        length = usable // block_align * block_align
        if length <= 0 or not (always or declared == 0 or short or outgrown):
            f.close()
            return None, None
        fmt_chunk = b"fmt " + struct.pack("<I", len(fmt)) + fmt + (b"\0" if len(fmt) & 1 else b"")
        header = _header(fmt_chunk, length, block_align)
        if outgrown:
            why = (f"sizes 0xFFFFFFFF in the header (the audio outgrew a RIFF): its {length} bytes to end of file "
                   "read as audio")
        elif declared == 0:
            why = f"data size 0 in the header (never finalised): its {length} bytes to end of file read as audio"
        elif short:
            why = (f"data size {declared} in the header but {held} bytes after it, and no chunk (never finalised): "
                   f"its {length} bytes to end of file read as audio")
        else:
            why = f"a header libsndfile cannot read: its data chunk ({length} bytes) read through a rewritten one"
        return io.BufferedReader(_Spliced(header, f, offset, length)), why
    except BaseException:
        f.close()
        raise
