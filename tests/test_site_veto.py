"""The site veto that ``edgemon-train adapt`` writes: what it sends back to background, how the
recorder runs it from a bundle, and what a bundle with a broken one says."""

from __future__ import annotations

import numpy as np
import pytest

from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.analysis.ensemble import Ensemble, describe_bundle
from edgemon.analysis.site_head import SiteHead, embedding_width
from edgemon.analysis.site_veto import SiteVeto, window_features
from edgemon.errors import BundleError
from training.adapted_bundle import write_adapted

BACKGROUND, CALL, OTHER = 0, 1, 2


def unit(*rows) -> np.ndarray:
    a = np.asarray(rows, np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def one_member(features: np.ndarray, called: list[int], classes: int = 3):
    """Probabilities and embeddings of one member whose windows have ``features`` and call ``called``."""
    probs = np.full((1, len(called), classes), 0.1, np.float32)
    probs[0, np.arange(len(called)), called] = 0.8
    return probs, features[None]


def test_a_call_like_a_known_false_alarm_goes_back_to_background_and_one_like_a_confirmed_call_stays():
    veto = SiteVeto(background=unit([1, 0, 0], [0.9, 0.1, 0]), calls=unit([0, 1, 0], [0, 0.9, 0.1]),
                    call_labels=np.array([CALL, CALL]), background_index=BACKGROUND, k=3)
    probs, embeddings = one_member(unit([1, 0.05, 0], [0.05, 1, 0], [1, 0, 0.02], [0, 0, 1]),
                                   called=[CALL, CALL, BACKGROUND, CALL])
    # 1: like the false alarms; 2: like the confirmed calls; 3: background already; 4: like neither
    # (nearest similarity 0.1 < 0.5), so the thresholds decide it
    assert veto.vetoed(probs, embeddings).tolist() == [True, False, False, False]
    out = veto.member_probs(probs, embeddings)
    assert out[0, 0].tolist() == [1.0, 0.0, 0.0] and np.array_equal(out[0, 1:], probs[0, 1:])


def test_a_class_never_confirmed_is_vetoed_only_when_very_like_a_false_alarm():
    veto = SiteVeto(background=unit([1, 0, 0]), calls=unit([0, 1, 0]), call_labels=np.array([CALL]),
                    background_index=BACKGROUND, unconfirmed_similarity=0.8)
    probs, embeddings = one_member(unit([1, 0.2, 0], [1, 1.5, 0]), called=[OTHER, OTHER])
    assert veto.vetoed(probs, embeddings).tolist() == [True, False]      # cosine 0.98 and 0.55


def test_the_veto_judges_the_class_the_members_vote_not_the_mean():
    """Three members: two call CALL weakly, one calls background surely; the vote is CALL while the
    mean favours background. A window like stored false alarms is sent back (a review found the
    veto reading the mean's class and leaving it alone)."""
    embeddings = np.repeat(unit([1, 0.05, 0])[None], 3, axis=0)               # [members, windows, d]
    confirmed = np.repeat(unit([0, 1, 0])[None], 3, axis=0)
    veto = SiteVeto(background=window_features(embeddings), calls=window_features(confirmed),
                    call_labels=np.array([CALL]), background_index=BACKGROUND, k=1)
    probs = np.array([[[0.3, 0.4, 0.3]], [[0.3, 0.4, 0.3]], [[0.98, 0.01, 0.01]]], np.float32)
    assert probs.mean(axis=0).argmax() == BACKGROUND
    assert veto.vetoed(probs, embeddings).tolist() == [True]


def test_features_are_cosines_over_all_members():
    e = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)
    f = window_features(e)
    assert f.shape == (4, 16) and np.allclose((f * f).sum(axis=1), 1.0)
    e[1] *= 7.0                                                        # a member's scale does not count
    assert np.allclose(window_features(e), f, atol=1e-6)


@pytest.fixture(scope="module")
def parent():
    return load_bundle(default_bundle_path())


def test_the_recorder_runs_a_bundles_veto_and_stores_nothing_it_sent_back(parent, tmp_path):
    """The bundle's own reference recording holds a gibbon duet. A veto made from that recording's
    windows as this site's false alarms silences it in the recorder's pipeline; one that also
    holds them as confirmed duets does not."""
    from edgemon.analysis.analyzer import Analyzer
    from training.adapt_windows import recording_windows
    recording = parent.path / "reference.flac"
    assert [e.label for e in Analyzer(parent).analyse_file(recording).events] == ["gibbon_duet"]
    windows = recording_windows(Ensemble(parent), recording)
    features = window_features(windows.embeddings)
    background = parent.labels.index(parent.background_label)
    false_alarms = SiteVeto(features, features[:0], np.zeros(0, np.int64), background)
    vetoed = write_adapted(parent, false_alarms, tmp_path / "vetoed", {"parent_bundle": parent.bundle_id})
    assert vetoed.manifest["site_veto"]["file"] == "site_veto.npz"
    ensemble = Ensemble(vetoed)
    assert ensemble.site_veto is not None and ensemble.site_head is None
    assert Analyzer(vetoed).analyse_file(recording).events == []
    shown, _ = describe_bundle(vetoed.path)                             # what `edgemon info` prints
    assert shown["site_corrections"] == {"site_veto": {"false_alarm_windows": len(features), "call_windows": 0,
                                                       "neighbours": 5}}
    assert describe_bundle(parent.path)[0]["site_corrections"] == {}
    duet = parent.labels.index("gibbon_duet")
    confirmed = SiteVeto(features, np.concatenate([features, features]), np.full(2 * len(features), duet), background)
    kept = write_adapted(parent, confirmed, tmp_path / "kept", {})
    assert [e.label for e in Analyzer(kept).analyse_file(recording).events] == ["gibbon_duet"]


def test_a_tampered_or_misfitting_veto_is_refused_with_its_file_named(parent, tmp_path):
    width = sum(s.get_outputs()[[o.name for o in s.get_outputs()].index("embedding")].shape[-1]
                for s in Ensemble(parent, verify=False).sessions)
    ok = SiteVeto(unit(*np.eye(width)[:3]), np.zeros((0, width), np.float32), np.zeros(0, np.int64), 0)
    out = write_adapted(parent, ok, tmp_path / "ok", {})
    veto_file = out.path / "site_veto.npz"
    veto_file.write_bytes(veto_file.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="site_veto.npz: site veto file does not match its sha256"):
        Ensemble(load_bundle(out.path))
    narrow = SiteVeto(np.ones((2, width // 2), np.float32), np.zeros((0, width // 2), np.float32), np.zeros(0, np.int64), 0)
    with pytest.raises(BundleError, match=rf"site veto expects {width // 2} embedding values per window"):
        write_adapted(parent, narrow, tmp_path / "narrow", {})
    assert not (tmp_path / "narrow").exists()


def test_rethresholding_an_adapted_bundle_keeps_its_site_head_and_veto(parent, tmp_path):
    """Found while adding the veto: re-adapting a bundle that has a site head with a thresholds
    candidate wrote the thresholds (fitted on the head's output) and dropped the head."""
    m, c = len(parent.members), len(parent.labels)
    d = embedding_width(Ensemble(parent, verify=False).sessions[0])
    head = SiteHead(np.zeros((m, d + c, c), np.float32), np.full((m, c), 0.01, np.float32),
                    np.zeros((m, d + c), np.float32), np.ones((m, d + c), np.float32))
    headed = write_adapted(parent, head, tmp_path / "headed", {})
    veto = SiteVeto(unit(*np.eye(m * d)[:2]), np.zeros((0, m * d), np.float32), np.zeros(0, np.int64), 0)
    both = write_adapted(headed, veto, tmp_path / "both", {})
    assert both.manifest["site_head"]["sha256"] == headed.manifest["site_head"]["sha256"]
    again = write_adapted(both, None, tmp_path / "again", {})
    assert again.manifest["site_head"]["sha256"] == headed.manifest["site_head"]["sha256"]
    assert again.manifest["site_veto"]["sha256"] == both.manifest["site_veto"]["sha256"]
    replaced = write_adapted(both, head, tmp_path / "replaced", {})     # a new head: fitted on raw members
    assert "site_veto" not in replaced.manifest
    # rebundle keeps members only: a bundle with site corrections is refused, not silently stripped
    from training.errors import DataError
    from training.rebundle import rebundle
    with pytest.raises(DataError, match=r"has site corrections \(site_head, site_veto\)"):
        rebundle(both.path, tmp_path / "any.json", tmp_path / "stripped")
    assert not (tmp_path / "stripped").exists()
