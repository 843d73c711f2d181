"""What tells one recording from another under the same name: a digest of its first audio bytes.

AudioMoth names its files by the minute they began, so two recorders on one schedule write the
same names, and often the same sizes. A card read into a database that already holds another
card's recordings must not replace their detections, and a review or adaptation must not read
another recorder's file for a detection. The digests read the first 4, 16 and 64 KiB of the audio
itself (after a WAV's chunks before ``data``, after a FLAC's metadata blocks; elsewhere after
4 KiB), so the headers a recorder rewrites when it closes a file (sizes, a FLAC's seek table and
checksum) do not count: a copy, a grown file or a file merely touched keeps them; another
recording does not, whatever its length.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import soundfile

from edgemon.analysis.containers import flac_frames_offset, wav_chunks

SAMPLE_SPAN = 65536      # frames digested at each end of a recording's decoded audio
SKIP_BYTES = 4096        # a file of another kind: past its header, whatever it is
SPAN_BYTES = 65536
PREFIXES = (4096, 16384, SPAN_BYTES)   # digested prefixes: a shorter file is compared over one it holds


def fingerprint(path: str | Path) -> str | None:
    """Digests of the first 4, 16 and 64 KiB of ``path``'s audio, as ``'N:hex,…'`` (a file holding
    less than 64 KiB adds one of all it holds), so a file of any length is compared with another
    over the longest prefix both hold. None when it holds no audio or cannot be read."""
    return _prefix_digests(_audio(path, SPAN_BYTES))


def _prefix_digests(data: bytes | None) -> str | None:
    if not data:
        return None
    spans = sorted({n for n in PREFIXES if n <= len(data)} | {len(data)})
    return ",".join(f"{n}:{hashlib.sha1(data[:n]).hexdigest()}" for n in spans)


def _audio(path: str | Path, size: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(_audio_offset(f))
            return f.read(size)
    except OSError:
        return None


def _audio_offset(f) -> int:
    """Where the audio begins: a WAV's ``data`` chunk, a FLAC's first frame, else SKIP_BYTES."""
    head = f.read(12)
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return next((body_at for chunk_id, body_at, _ in wav_chunks(f) if chunk_id == b"data"), SKIP_BYTES)
    if head[:4] == b"fLaC":
        return flac_frames_offset(f) or SKIP_BYTES
    return SKIP_BYTES


def another_recording(stored: str | None, path: str | Path) -> bool:
    """Whether ``path`` is not the recording whose digests were ``stored``: over the longest
    digested prefix it holds, its audio differs. False when that cannot be told: no digest stored
    (a ledger row from before digests were kept), or the file holds less audio than the shortest
    prefix digested."""
    if not stored:
        return False
    digests = dict(_parse(part) for part in stored.split(","))
    data = _audio(path, max(digests))
    if data is None:
        return False
    held = [n for n in digests if n <= len(data)]
    return bool(held) and hashlib.sha1(data[:max(held)]).hexdigest() != digests[max(held)]


def _parse(part: str) -> tuple[int, str]:
    span, _, digest = part.rpartition(":")      # 'N:hex'; a bare digest covers SPAN_BYTES
    return (int(span) if span else SPAN_BYTES), digest


def not_analysed_as(entry: Mapping, path: Path, grown_ok: bool = False) -> str | None:
    """Why the file at ``path`` is not the recording the ledger ``entry`` (``size`` and, when
    kept, ``fingerprint`` and ``tail_digest``) describes, or None when it is. ``grown_ok``: a
    larger file with the same first audio is the recording, grown since (what was analysed is
    still in it)."""
    size, analysed = path.stat().st_size, entry.get("size")
    if analysed is not None and (size < analysed or (size > analysed and not grown_ok)):
        return f"{size} bytes at {path}, {analysed} when analysed"
    if another_recording(entry.get("fingerprint"), path):
        return f"{path} holds other audio than the recording analysed under this name"
    # Same size and first audio, other last bytes: written again in place (a copy that set its
    # size first, a damaged card). Its detections are of audio no longer there (a review:
    # reanalyse replaced 5 detections with 1 of a file whose last two thirds were zeros).
    if entry.get("tail_digest") and size == analysed and digests(path)[1] not in (None, entry["tail_digest"]):
        return f"{path} ends in other bytes than the recording analysed under this name (written again since)"
    return None


def digests(path: str | Path) -> tuple[str | None, str | None]:
    """``path``'s ``fingerprint`` and its tail digest, read in one opening: a digest of the file's
    header (what lies before its audio: an AudioMoth's comment names the device and the time, a
    FLAC's STREAMINFO holds the audio's MD5; at most ``SPAN_BYTES``) and of its last
    ``SPAN_BYTES``. With the size and the first audio, the tail digest tells a file merely touched,
    moved or copied from one written again at the same size (a copy that set its size first and
    stalled was analysed with a silent tail, and its completion looked "touched") or from another
    recorder's of the same name that begins and ends in silence. (None, None) if unreadable."""
    try:
        with open(path, "rb") as f:
            audio_at = _audio_offset(f)
            f.seek(audio_at)
            first = f.read(SPAN_BYTES)
            f.seek(0)
            header = f.read(min(audio_at, SPAN_BYTES))
            size = f.seek(0, 2)
            f.seek(max(0, size - SPAN_BYTES))
            return _prefix_digests(first), hashlib.sha1(header + f.read(SPAN_BYTES)).hexdigest()
    except OSError:
        return None, None


def samples_digest(path: str | Path) -> str | None:
    """A digest of ``path``'s decoded audio: its rate, channels and length in frames, and its
    first and last ``SAMPLE_SPAN`` frames as floats (the same for a 16-bit WAV and the FLAC it was
    converted to, at any bit depth that holds its samples). What tells a recording converted to
    another format from another recording: their bytes differ from the first one on. None when it
    cannot be decoded (a header never finalised, a damaged file)."""
    try:
        with soundfile.SoundFile(os.fsencode(path)) as f:   # bytes: any name
            frames, rate, channels = f.frames, f.samplerate, f.channels
            if frames <= 0:
                return None
            first = f.read(min(frames, SAMPLE_SPAN), dtype="float32", always_2d=True)
            f.seek(max(0, frames - SAMPLE_SPAN))
            last = f.read(dtype="float32", always_2d=True)
    except (OSError, RuntimeError, ValueError, soundfile.LibsndfileError):
        return None
    if len(last) != min(frames, SAMPLE_SPAN):   # the header promises audio the file does not hold
        return None
    data = struct.pack("<qii", frames, rate, channels) + np.ascontiguousarray(first).tobytes() + \
        np.ascontiguousarray(last).tobytes()
    return f"{frames}:{hashlib.sha1(data).hexdigest()}"
