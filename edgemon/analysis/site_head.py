"""A site head: a small correction, learnt from one site's reviewed detections, applied to each
ensemble member's output (``edgemon-train adapt`` writes it; the recorder applies it in numpy).

Per member ``m`` and window: ``probs' = softmax(log(probs) + z @ W[m] + b[m])`` with
``z = clip((concat(embedding, log(probs)) - mean[m]) / scale[m], -5, 5)``. All zeros is the parent model
unchanged, so a head trained with a strong penalty stays close to it. The majority vote and the
thresholds then run on ``probs'`` exactly as on a plain bundle.

The head lives in the bundle as ``site_head.npz``, named with its sha256 in the manifest's
``site_head`` entry, and is verified like the members.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np

from edgemon.analysis.bundle import Bundle, sha256_of, verified_part
from edgemon.errors import BundleError

LOG_FLOOR = 1e-6  # probabilities below this are taken as this before the log
Z_CLIP = 5.0      # standardised features are clipped: audio unlike the reviews cannot swing the head


@dataclasses.dataclass(frozen=True)
class SiteHead:
    """Arrays for ``M`` members, ``F = d + C`` features (embedding then log-probabilities) and
    ``C`` classes: ``weights [M, F, C]``, ``bias [M, C]``, ``mean``/``scale [M, F]``."""

    weights: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    def logits(self, member: int, probs: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """One member's ``probs [B, C]`` and ``embedding [B, d]`` -> corrected logits ``[B, C]``."""
        log_p = np.log(np.maximum(probs, LOG_FLOOR))
        z = np.clip((np.concatenate([embedding, log_p], axis=1) - self.mean[member]) / self.scale[member],
                    -Z_CLIP, Z_CLIP)
        return log_p + z @ self.weights[member] + self.bias[member]

    def member_probs(self, probs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """``probs [M, B, C]`` and ``embeddings [M, B, d]`` -> corrected probabilities ``[M, B, C]``."""
        out = np.stack([self.logits(m, probs[m], embeddings[m]) for m in range(len(probs))])
        out -= out.max(axis=2, keepdims=True)
        np.exp(out, out=out)
        return out / out.sum(axis=2, keepdims=True)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, weights=self.weights, bias=self.bias, mean=self.mean, scale=self.scale)
        return buffer.getvalue()


def embedding_width(session) -> int | None:
    """The width of an onnxruntime member's ``embedding`` output (None: it has none, or undeclared)."""
    return {o.name: o.shape for o in session.get_outputs()}.get("embedding", [None, None])[-1]


def load_site_head(bundle: Bundle, sessions=()) -> SiteHead | None:
    """The bundle's site head, verified against its manifest entry and the members' onnxruntime
    ``sessions`` (their ``embedding`` width); None for a plain bundle. Raises BundleError naming
    the head file when it is missing, altered or the wrong shape."""
    path = verified_part(bundle, "site_head", "site head")
    if path is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            head = SiteHead(*(np.asarray(data[k], np.float32) for k in ("weights", "bias", "mean", "scale")))
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{path}: unreadable site head ({exc})") from exc
    m, c = len(bundle.members), len(bundle.labels)
    if (head.weights.ndim != 3 or head.weights.shape[0] != m or head.weights.shape[2] != c
            or head.bias.shape != (m, c) or head.mean.shape != head.weights.shape[:2]
            or head.scale.shape != head.mean.shape or not (head.scale > 0).all()):
        raise BundleError(f"{path}: site head shapes {head.weights.shape} do not fit {m} members and {c} labels")
    for member_path, session in zip(bundle.member_paths, sessions):
        width = embedding_width(session)
        if width != head.weights.shape[1] - c:
            raise BundleError(f"{path}: site head expects {head.weights.shape[1] - c}-wide embeddings, "
                              f"{member_path.name} gives {width}")
    return head


def write_site_head(head: SiteHead, directory: Path, name: str = "site_head.npz") -> dict:
    """Write ``head`` into ``directory``; return its manifest entry (file and sha256)."""
    path = Path(directory) / name
    path.write_bytes(head.to_bytes())
    return {"file": name, "sha256": sha256_of(path)}
