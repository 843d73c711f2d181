"""A site veto: a window the members call a call is sent back to background when it sounds like
this site's known false alarms more than like its confirmed calls of that class (``edgemon-train
adapt`` writes it from reviewed detections; the recorder applies it in numpy).

A window's features are its members' ``embedding`` outputs, each scaled to unit length, side by
side (divided by sqrt(M), so a dot product is a cosine similarity). For a window whose members'
mean probability calls class ``c``: among its ``k`` most similar stored windows — the site's
background ones and those of confirmed calls of ``c`` — a majority of background vetoes it, if the
nearest is at least ``min_similarity`` alike. With no confirmed call of ``c`` stored, it is vetoed
when a background window is more alike than ``unconfirmed_similarity``. A vetoed window's member
probabilities become background, so the vote, thresholds and evidence rule then run as on a
plain bundle. Recurring false alarms of one site (an insect, a generator, a bird the model does
not know) are what it removes; sounds it has not met are left to the thresholds.

The veto lives in the bundle as ``site_veto.npz``, named with its sha256 in the manifest's
``site_veto`` entry, and is verified like the members.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np

from edgemon.analysis.bundle import Bundle, sha256_of, verified_part
from edgemon.analysis.site_head import embedding_width
from edgemon.analysis.vote import majority_vote
from edgemon.errors import BundleError


def window_features(embeddings: np.ndarray) -> np.ndarray:
    """Members' embeddings ``[M, B, d]`` -> unit-length features ``[B, M*d]``."""
    norm = np.linalg.norm(embeddings, axis=2, keepdims=True)
    unit = embeddings / np.maximum(norm, 1e-9)
    return np.concatenate(list(unit), axis=1) / np.sqrt(len(embeddings))


@dataclasses.dataclass(frozen=True)
class SiteVeto:
    """``background [Nb, F]`` and ``calls [Nc, F]`` window features, ``call_labels [Nc]`` their
    class indices; ``background_index`` the background class; the vote's parameters."""

    background: np.ndarray
    calls: np.ndarray
    call_labels: np.ndarray
    background_index: int
    k: int = 5
    min_similarity: float = 0.5
    unconfirmed_similarity: float = 0.8

    def vetoed(self, probs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """``probs [M, B, C]``, ``embeddings [M, B, d]`` -> which windows the veto sends back ``[B]``."""
        called = majority_vote(probs).winner   # the class the recorder's vote calls, not the mean's
        out = np.zeros(len(called), bool)
        rows = np.flatnonzero(called != self.background_index)
        if rows.size == 0 or len(self.background) == 0:
            return out
        # The stored windows are float32 already (``load_site_veto``, ``fit_veto``): no copy per batch.
        features = window_features(embeddings[:, rows])
        to_background = features @ self.background.T
        to_calls = features @ self.calls.T
        for j, row in enumerate(rows):
            alike = to_calls[j, self.call_labels == called[row]]
            if alike.size == 0:
                out[row] = to_background[j].max() > self.unconfirmed_similarity
                continue
            sims = np.concatenate([to_background[j], alike])
            top = np.argpartition(-sims, min(self.k, len(sims)) - 1)[: self.k]
            background_votes = int((top < to_background.shape[1]).sum())
            out[row] = 2 * background_votes > len(top) and sims[top].max() >= self.min_similarity
        return out

    def member_probs(self, probs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """``probs [M, B, C]`` with the vetoed windows' probabilities all background."""
        vetoed = self.vetoed(probs, embeddings)
        if not vetoed.any():
            return probs
        out = probs.copy()
        out[:, vetoed, :] = 0.0
        out[:, vetoed, self.background_index] = 1.0
        return out

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, background=self.background.astype(np.float16), calls=self.calls.astype(np.float16),
                 call_labels=self.call_labels.astype(np.int16),
                 params=np.array([self.background_index, self.k, self.min_similarity, self.unconfirmed_similarity],
                                 np.float64))
        return buffer.getvalue()


def load_site_veto(bundle: Bundle, sessions=()) -> SiteVeto | None:
    """The bundle's site veto, verified against its manifest entry and the members' onnxruntime
    ``sessions`` (their ``embedding`` width); None for a bundle without one. Raises BundleError
    naming the file when it is missing, altered or the wrong shape."""
    path = verified_part(bundle, "site_veto", "site veto")
    if path is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            background, calls = (np.asarray(data[k], np.float32) for k in ("background", "calls"))
            call_labels, params = np.asarray(data["call_labels"], np.int64), np.asarray(data["params"], np.float64)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{path}: unreadable site veto ({exc})") from exc
    n_classes = len(bundle.labels)
    if (background.ndim != 2 or calls.ndim != 2 or calls.shape[1] != background.shape[1]
            or call_labels.shape != (len(calls),) or params.shape != (4,)
            or not ((call_labels >= 0) & (call_labels < n_classes)).all()
            or not 0 <= params[0] < n_classes or params[1] < 1):
        raise BundleError(f"{path}: site veto arrays do not fit {n_classes} labels")
    widths = [embedding_width(s) for s in sessions]
    if sessions and (None in widths or sum(widths) != background.shape[1]):
        raise BundleError(f"{path}: site veto expects {background.shape[1]} embedding values per window, "
                          f"the members give {widths}")
    return SiteVeto(background, calls, call_labels, int(params[0]), int(params[1]), float(params[2]),
                    float(params[3]))


def write_site_veto(veto: SiteVeto, directory: Path, name: str = "site_veto.npz") -> dict:
    """Write ``veto`` into ``directory``; return its manifest entry (file and sha256)."""
    path = Path(directory) / name
    path.write_bytes(veto.to_bytes())
    return {"file": name, "sha256": sha256_of(path)}
