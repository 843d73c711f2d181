"""Which search keeps its trial models in an ``--out``: trial numbers start at 0 in every Optuna
study, so two studies' trials in one directory overwrite each other. The first search to use a
directory records itself in ``search.json``; another is refused in one line."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from training.errors import DataError

if TYPE_CHECKING:   # light: the command line checks --out before it loads optuna
    import optuna

SEARCH_RECORD = "search.json"


def _storage_label(storage_url: str, run_dir: Path) -> str:
    """The storage as ``search.json`` records it: ``study.db`` for the default one in ``run_dir``
    (so the directory may move), else the URL with its password masked."""
    import sqlalchemy.engine

    if storage_url == f"sqlite:///{(run_dir / 'study.db').resolve()}":
        return "study.db"
    try:
        return sqlalchemy.engine.make_url(storage_url).render_as_string(hide_password=True)
    except Exception:   # not a URL SQLAlchemy parses: the storage has refused it already
        return storage_url


def claim_trials_dir(run_dir: Path, study_name: str, storage_url: str, study: optuna.Study) -> None:
    """Refuse to keep this study's trial models in ``run_dir`` when they would overwrite another
    search's: trial numbers start at 0 in every study, so a second study (another ``--study`` or
    ``--storage``) into one ``--out`` wrote its trial 0 over the first's ``trials/0000``, and
    ``ensemble`` of the first then bundled the second's model under the first's score (a trial).
    The first search to use ``run_dir`` records itself in ``search.json``; a directory from before
    that file is this study's when one of its trials names a model there."""
    mine = {"study": study_name, "storage": _storage_label(storage_url, run_dir)}
    record = run_dir / SEARCH_RECORD
    kept = sorted(p.name for p in (run_dir / "trials").glob("*") if p.is_dir())
    if not record.exists() and kept:
        trials_dir = (run_dir / "trials").resolve()
        ours = any(Path(t.user_attrs.get("run_dir", "/")).parent == trials_dir
                   for t in study.get_trials(deepcopy=False))
        if not ours:
            raise DataError(f"{run_dir}: its trials/ ({len(kept)} kept, first {kept[0]}) are another search's, not "
                            f"study {study_name!r}'s; this one's trials would overwrite them: choose another --out")
    # Written beside it, then linked into place (a link never replaces a file): of two searches
    # started at once one claims it, and the other reads it whole. Opened with "x" and then
    # written, the other could read it empty and refuse a shared --out as "not readable" (a review).
    text = json.dumps(mine, indent=2) + "\n"
    draft = run_dir / f".{SEARCH_RECORD}.{secrets.token_hex(8)}.tmp"   # workers on several machines
    try:
        draft.write_text(text, encoding="utf-8")
        try:
            os.link(draft, record)
        except FileExistsError:
            raise
        except OSError:   # no hard links there (FAT, some network shares): made, then written
            with open(record, "x", encoding="utf-8") as f:
                f.write(text)
    except FileExistsError:
        check_trials_dir(run_dir, study_name, storage_url)
    finally:
        with contextlib.suppress(OSError):
            draft.unlink()


def check_trials_dir(run_dir: Path, study_name: str, storage_url: str) -> None:
    """Refuse a ``run_dir`` whose ``search.json`` records another study (``claim_trials_dir``);
    also before the audio loads, so the refusal comes at once."""
    record = run_dir / SEARCH_RECORD
    if not record.exists():
        return
    mine = {"study": study_name, "storage": _storage_label(storage_url, run_dir)}
    try:
        claimed = json.loads(record.read_text(encoding="utf-8"))
        theirs = {"study": claimed["study"], "storage": claimed["storage"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{record}: not a readable search record ({type(exc).__name__}): move it aside") from None
    if theirs != mine:
        raise DataError(f"{run_dir}: keeps the trial models of study {theirs['study']!r} ({theirs['storage']}); "
                        f"study {study_name!r} ({mine['storage']}) numbers its trials from 0 too and would "
                        f"overwrite them: choose another --out")
