"""A released fleet migration or view revision is never edited, only appended to: a server that
applied it keeps what it applied, so an edit would leave two fleets with different views under one
number. The digests are of the released texts; a new release appends its own."""

from __future__ import annotations

import hashlib

from edgemon.sync.fleetschema import MIGRATIONS
from edgemon.sync.fleetviews import VIEW_REVISIONS

RELEASED_MIGRATIONS = ("d099901e05374404", "42b8d89af0696dea", "b15f00c0d9b3bee6", "94c13f6944b9d8a5")
RELEASED_VIEW_REVISIONS = ("7d6519a2016f4c24", "dd63fe02b6c292be", "75bd8209992aae77", "17258f96591a2808",
                           "7dac9b89af39fd30", "cfd071235c2712c8",
                           "1a805f835a944ec6", "003837ae06fe0722", "fc585b4365d6bfb3", "de2d83ae29a41176")


def _digests(texts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts)


def test_released_migrations_are_never_edited():
    assert _digests(MIGRATIONS)[:len(RELEASED_MIGRATIONS)] == RELEASED_MIGRATIONS


def test_released_view_revisions_are_never_edited():
    assert _digests(VIEW_REVISIONS)[:len(RELEASED_VIEW_REVISIONS)] == RELEASED_VIEW_REVISIONS
