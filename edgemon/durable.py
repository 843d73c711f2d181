"""Writes that survive a power cut: a renamed file's directory entry put on the disk, for every
layer that renames files into place (bundles, exports, clips)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename durable. Some file systems refuse fsync on a directory; the file is then
    still complete, only the rename might not survive a power cut."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
