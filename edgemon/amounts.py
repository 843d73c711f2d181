"""Amounts of audio as a person reads them, in a unit that fits: a run over a few short files said
"0.00 h of audio", which reads as nothing analysed (a newcomer trial)."""

from __future__ import annotations


def audio_amount(seconds: float, like: float | None = None) -> str:
    """``seconds`` of audio in the unit that ``like`` (default: ``seconds`` itself) is best read in:
    '42 s' under a minute, '3.6 min' under an hour, '2.35 h' from then on; the same unit for two
    amounts said side by side ("1.2 of 3.6 min")."""
    scale = seconds if like is None else like
    if scale < 59.5:   # "60 s" is a minute (59.5 s and more rounded to it)
        return f"{seconds:.0f} s" if seconds >= 9.5 or seconds == 0 else f"{seconds:.1f} s"
    if scale < 3597:   # 59.9 min at most: "60.0 min" is an hour
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def audio_amounts(part_s: float, whole_s: float) -> str:
    """'1.2 of 3.6 min': a part of a whole in the whole's unit."""
    whole = audio_amount(whole_s)
    return f"{audio_amount(part_s, like=whole_s).rsplit(' ', 1)[0]} of {whole}"
