"""Recorder files' headers, read by hand (``struct``, a bounded number of bytes, no audio decoded):
a WAV's fmt, LIST/INFO (the AudioMoth comment) and GUANO chunks, a FLAC's Vorbis comment.
``edgemon.files.recordings`` reads times from them, ``edgemon.files.completeness`` whether a file is whole."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from edgemon.analysis.containers import MAX_FLAC_BLOCKS, wav_chunks

MAX_HEADER_READ = 4 * 1024 * 1024  # bytes of non-audio chunks read from one file, at most


def _read_fmt(body: bytes, meta: dict) -> None:
    if len(body) >= 16:
        fmt_tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", body[:16])
        meta.update(audio_format=fmt_tag, channels=channels, sample_rate=rate,
                    block_align=block_align, bits_per_sample=bits)


def _text(raw: bytes) -> str:
    """C-string bytes -> str; recorders are not consistent about NUL padding or encoding."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


def _read_list(body: bytes, meta: dict) -> None:
    if body[:4] != b"INFO":
        return
    info, i = meta.setdefault("info", {}), 4
    while i + 8 <= len(body):
        sub_id, sub_size = struct.unpack("<4sI", body[i:i + 8])
        info[sub_id.decode("latin-1")] = _text(body[i + 8:i + 8 + sub_size])
        i += 8 + sub_size + (sub_size & 1)
    for key, field in (("ICMT", "comment"), ("IART", "artist")):
        if key in info:
            meta[field] = info[key]


def _read_guano(body: bytes, meta: dict) -> None:
    """GUANO: UTF-8 lines of ``Key: value``; keys may hold ``|`` namespaces but never ``:``."""
    fields = {}
    for line in body.decode("utf-8", "replace").strip("\0").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    meta["guano"] = fields


def _read_ds64(body: bytes, meta: dict) -> None:
    """An RF64's sizes (its RIFF size field says 0xFFFFFFFF): the 64-bit RIFF size."""
    if len(body) >= 8:
        meta["riff_size"] = struct.unpack("<Q", body[:8])[0]


_READERS = {b"fmt ": _read_fmt, b"LIST": _read_list, b"guan": _read_guano, b"ds64": _read_ds64}


def _walk_chunks(f: BinaryIO, size: int, meta: dict) -> None:
    """Fill ``meta`` from the chunks after the 12-byte RIFF header (``containers.wav_chunks``).
    Seeks past audio rather than reading it. A chunk running past end of file is read as far as
    it goes."""
    budget = MAX_HEADER_READ
    for chunk_id, body_at, chunk_size in wav_chunks(f):
        if chunk_size > size - body_at:
            meta["truncated"] = True
        if "data_offset" in meta:
            meta["chunk_after_data"] = True
        if chunk_id == b"data" and "data_offset" not in meta:
            meta["data_offset"], meta["data_size"] = body_at, chunk_size
        elif chunk_id in _READERS and budget > 0:
            body = f.read(min(chunk_size, budget))
            budget -= len(body)
            _READERS[chunk_id](body, meta)


def read_wav_metadata(path: str | Path) -> dict:
    """Header fields of a WAV file, read by hand with at most ~MAX_HEADER_READ bytes of reading.

    Always ``file_size`` (bytes). For a RIFF/WAVE (or RF64) file also, where present: ``riff_size``
    and ``data_size`` (as declared, bytes; an RF64's from its ``ds64`` chunk), ``data_offset``
    (bytes), ``sample_rate`` (Hz),
    ``channels``, ``bits_per_sample``, ``block_align`` (bytes per frame), ``audio_format``,
    ``info`` (all LIST/INFO fields), ``comment`` (ICMT), ``artist`` (IART), ``guano`` (dict of the
    ``guan`` chunk's ``Key: value`` lines), ``truncated`` (a chunk runs past end of file) and
    ``chunk_after_data`` (a chunk follows the data chunk).
    Truncated files and lying sizes give what was found. Raises ``OSError`` if unopenable.
    """
    with open(path, "rb") as f:
        meta: dict = {"file_size": os.fstat(f.fileno()).st_size}
        head = f.read(12)
        if len(head) == 12 and head[:4] in (b"RIFF", b"RF64") and head[8:] == b"WAVE":
            meta["riff_size"] = struct.unpack("<I", head[4:8])[0]
            _walk_chunks(f, meta["file_size"], meta)
    return meta


def _read_vorbis_comment(body: bytes, meta: dict) -> None:
    """A FLAC VORBIS_COMMENT block: vendor string, then ``KEY=value`` entries, each length-prefixed
    (32-bit little-endian). ``COMMENT`` (or ``DESCRIPTION``) is the AudioMoth comment's place when
    a recording is kept as FLAC (a converter, or soundfile's ``comment``)."""
    fields, i = {}, 0
    try:
        vendor = struct.unpack_from("<I", body, i)[0]
        i += 4 + vendor
        count = struct.unpack_from("<I", body, i)[0]
        i += 4
        for _ in range(count):
            size = struct.unpack_from("<I", body, i)[0]
            key, sep, value = body[i + 4:i + 4 + size].decode("utf-8", "replace").partition("=")
            i += 4 + size
            if sep:
                fields[key.strip().upper()] = value.strip()
    except struct.error:   # cut short: what was read
        pass
    meta["info"] = fields
    for key in ("COMMENT", "DESCRIPTION"):
        if key in fields:
            meta["comment"] = fields[key]
            break


def read_flac_metadata(path: str | Path) -> dict:
    """Header fields of a FLAC file: ``file_size``, and from its VORBIS_COMMENT block ``info`` (the
    ``KEY=value`` fields, keys upper-cased) and ``comment``. At most ~MAX_HEADER_READ bytes read;
    no audio decoded. Raises ``OSError`` if unopenable."""
    with open(path, "rb") as f:
        meta: dict = {"file_size": os.fstat(f.fileno()).st_size}
        if f.read(4) != b"fLaC":
            return meta
        pos = 4
        for _ in range(MAX_FLAC_BLOCKS):
            f.seek(pos)
            block = f.read(4)
            if len(block) < 4:
                break
            size = int.from_bytes(block[1:], "big")
            if block[0] & 0x7F == 4 and size <= MAX_HEADER_READ:
                _read_vorbis_comment(f.read(size), meta)
            pos += 4 + size
            if block[0] & 0x80:   # the last metadata block
                break
    return meta


def read_metadata(path: Path) -> dict:
    """``read_wav_metadata`` or ``read_flac_metadata`` by the name's suffix; {} for other files."""
    suffix = path.suffix.lower()
    return read_wav_metadata(path) if suffix == ".wav" else read_flac_metadata(path) if suffix == ".flac" else {}
