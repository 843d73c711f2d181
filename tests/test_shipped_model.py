"""The embedded default bundle still scores, on the devel split, what its manifest claims."""

import numpy as np
import pytest

from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.analysis.ensemble import Ensemble
from training.data import load_split
from training.evaluate import uar


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(default_bundle_path())


def test_default_bundle_is_verified_and_describes_itself(bundle):
    assert bundle.labels[0] == bundle.background_label == "background"
    assert len(bundle.labels) == 5 and bundle.window_s > bundle.hop_s > 0
    assert all(m.devel_uar is not None and m.test_uar is not None for m in bundle.members)
    # Names for every call type, a confidence ceiling, and reference windows for each class.
    assert sorted(bundle.label_names) == sorted(set(bundle.labels) - {bundle.background_label})
    assert 0.5 < bundle.confidence_max <= 1 and max(bundle.thresholds.values()) < bundle.confidence_max
    assert {w.label for w in bundle.self_check.windows} == set(bundle.labels)


def test_default_bundle_scores_its_claimed_devel_uar(bundle, borneo_dir):
    devel = load_split(borneo_dir, "devel", bundle.labels, bundle.frontend)
    ensemble = Ensemble(bundle)
    probs = np.stack([ensemble.member_probs(f[None])[:, 0] for f in devel.features], axis=1)  # [M, n, C]
    for member, member_probs in zip(bundle.members, probs):
        measured = uar(devel.targets, member_probs.argmax(1), len(bundle.labels))
        assert measured == pytest.approx(member.devel_uar, abs=0.01)
