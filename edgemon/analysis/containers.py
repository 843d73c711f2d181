"""Where things lie in an audio file's container, read by hand with a bounded number of seeks and
no decoding: a WAV's RIFF chunks, a FLAC's first audio frame. Shared by what reads a recorder's
header (``files.recordings``) and what digests a recording's audio (``storage.fingerprint``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

MAX_CHUNKS = 256  # a RIFF walk stops here, so a garbage file cannot keep it busy
MAX_FLAC_BLOCKS = 128  # FLAC allows at most 127 metadata blocks before the first frame

_ID_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _")


def _looks_like_id(raw: bytes) -> bool:
    """Chunk ids in the wild are letters, digits, space or '_' ("fmt ", "LIST", "_PMX")."""
    return len(raw) == 4 and all(b in _ID_BYTES for b in raw)


# Chunk ids recorders and editors write: one of these at the unpadded position is a missing pad
# byte, whatever the bytes after it look like (a review found "data" followed by a size whose low
# byte is a letter read as the id "ata?" one byte on, and the audio lost).
_KNOWN_IDS = frozenset({b"data", b"fmt ", b"LIST", b"guan", b"fact", b"bext", b"iXML", b"cue ", b"smpl",
                        b"inst", b"JUNK", b"PAD ", b"junk", b"id3 ", b"ID3 ", b"PEAK", b"acid", b"_PMX",
                        b"labl", b"note", b"ltxt", b"plst", b"wavl", b"slnt", b"DISP", b"afsp"})


def _next_chunk(f: BinaryIO, end: int, size: int) -> int:
    """Position of the chunk after a body of ``size`` bytes ending at ``end``: an odd size is
    followed by a pad byte, as RIFF says, unless the unpadded position holds a known chunk id, or
    only it holds anything like an id (some writers forget the pad byte)."""
    # The size's parity, not the position's: after one chunk without its pad every later chunk
    # lies at an odd offset, and a padded odd chunk there (a LIST after an unpadded GUANO) was
    # taken to end on its pad, the walk lost, and the recording quarantined as "no data chunk".
    if not size & 1:
        return end
    f.seek(end)
    ids = f.read(5)
    if ids[:4] in _KNOWN_IDS:
        return end
    return end if _looks_like_id(ids[:4]) and not _looks_like_id(ids[1:]) else end + 1


def wav_chunks(f: BinaryIO) -> Iterator[tuple[bytes, int, int]]:
    """(id, offset of its body, declared size) of each chunk after the 12-byte RIFF (or RF64)
    header of the file ``f``; when one is yielded ``f`` stands at its body. An RF64's ``data``
    chunk is given the size its ``ds64`` chunk declares. Stops at end of file, at an implausible
    chunk id (a lying size led into audio), at a chunk that reaches end of file, or after MAX_CHUNKS."""
    end_of_file = f.seek(0, 2)
    pos, data64 = 12, None
    for _ in range(MAX_CHUNKS):
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8 or not _looks_like_id(head[:4]):
            return
        chunk_id, chunk_size = struct.unpack("<4sI", head)
        if chunk_id == b"ds64" and chunk_size >= 16:
            # An RF64 says its sizes here (EBU Tech 3306), 0xFFFFFFFF in the chunks: one still
            # being written says data size 0, as an AudioMoth WAV does, and was analysed as 0 s.
            sizes = f.read(16)
            data64 = struct.unpack("<QQ", sizes)[1] if len(sizes) == 16 else None
            f.seek(pos + 8)
        elif chunk_id == b"data" and chunk_size == 0xFFFFFFFF and data64 is not None:
            chunk_size = data64
        yield chunk_id, pos + 8, chunk_size
        end = pos + 8 + chunk_size
        if end >= end_of_file:
            # Nothing follows it. A ds64 may claim up to 2**64 bytes, and a seek there failed (past
            # 2**63 a ValueError, a traceback in watch and classify; past 16 TiB on ext4 EINVAL,
            # "Invalid argument" until quarantined) where the audio before it was readable.
            return
        pos = _next_chunk(f, end, chunk_size)


def flac_frames_offset(f: BinaryIO) -> int | None:
    """Where the first audio frame of the FLAC file ``f`` begins (after its metadata blocks);
    None when the blocks end before their last one says so."""
    pos = 4
    for _ in range(MAX_FLAC_BLOCKS):
        f.seek(pos)
        block = f.read(4)
        if len(block) < 4:
            return None
        pos += 4 + int.from_bytes(block[1:], "big")
        if block[0] & 0x80:    # the last metadata block
            return pos
    return None
