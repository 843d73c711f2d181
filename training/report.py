"""``edgemon-train report RUN_DIR``: the paper's figures for a search run, as PNGs and Markdown.

Table 1 (baseline, best single model, second best, ensemble; devel and test UAR), confusion
matrices of the best model and of the ensemble, the class distribution of train / devel /
balanced train, a t-SNE of the best model's devel embeddings, the optimisation history and the
hyper-parameter importances.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna

from edgemon.analysis.bundle import load_bundle
from edgemon.analysis.ensemble import Ensemble
from training import baseline
from training.data import check_same_labels
from training.errors import DataError
from training.evaluate import metrics, plot_confusion
from training.runs import Splits
from training.train import balanced_indices


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_class_distribution(splits: Splits, path: Path) -> None:
    plt = _pyplot()
    labels = splits.train.labels
    balanced = np.bincount(splits.train.targets[balanced_indices(splits.train.targets, np.random.default_rng(0))],
                           minlength=len(labels))
    counts = {"train": splits.train.class_counts(), "devel": splits.devel.class_counts(), "balanced train": balanced}
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.27
    for i, (name, c) in enumerate(counts.items()):
        ax.bar(np.arange(len(labels)) + (i - 1) * width, c, width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("clips")
    ax.set_title("Class distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tsne(embeddings: np.ndarray, targets: np.ndarray, labels, path: Path) -> None:
    from sklearn.manifold import TSNE

    plt = _pyplot()
    points = TSNE(n_components=2, perplexity=min(30, len(embeddings) - 1), random_state=0,
                  init="pca").fit_transform(embeddings)
    fig, ax = plt.subplots(figsize=(6, 5))
    for c, label in enumerate(labels):
        ax.scatter(*points[targets == c].T, s=14, label=label)
    ax.legend(fontsize=8)
    ax.set_title("t-SNE of devel embeddings (best model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_study(study: optuna.Study, out: Path) -> dict:
    """Optimisation history and fANOVA importances; returns the importances."""
    plt = _pyplot()
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    fig, ax = plt.subplots(figsize=(7, 4))
    values = [t.value for t in trials]
    ax.scatter([t.number for t in trials], values, s=12, label="completed trial")
    ax.plot([t.number for t in trials], np.maximum.accumulate(values), color="C1", label="best so far")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    ax.scatter([t.number for t in pruned], [max(t.intermediate_values.values(), default=0) for t in pruned],
               s=10, marker="x", color="grey", label="pruned (best reported)")
    ax.set_xlabel("trial")
    ax.set_ylabel("devel UAR")
    ax.legend()
    ax.set_title("Optimisation history")
    fig.tight_layout()
    fig.savefig(out / "optimisation_history.png", dpi=110)
    plt.close(fig)
    # fANOVA named, as the title says: Optuna 5's default evaluator is PED-ANOVA.
    fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=fanova) if len(trials) >= 2 else {}
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_title("Hyper-parameter importance (fANOVA)")
    fig.tight_layout()
    fig.savefig(out / "param_importances.png", dpi=110)
    plt.close(fig)
    return importances


def build_report(run_dir: Path, data_dir: Path, study_name: str = "edgemon",
                 ensemble_dir: Path | None = None, storage: str | None = None) -> dict:
    """Write ``RUN_DIR/report/`` (PNGs + report.md) from a search run and its ensemble, the bundle
    ``edgemon-train ensemble --out`` wrote (default ``RUN_DIR/ensemble``), whose figures are in
    ``<bundle>-report`` beside it. The study is read from ``storage`` (default ``RUN_DIR/study.db``)."""
    ensemble_dir = Path(ensemble_dir) if ensemble_dir is not None else run_dir / "ensemble"
    report_dir = ensemble_dir.parent / f"{ensemble_dir.name}-report"
    summary_path = report_dir / "summary.json"
    if not summary_path.is_file():
        raise DataError(f"{summary_path}: run 'edgemon-train ensemble --out {ensemble_dir}' on this run first")
    summary = json.loads(summary_path.read_text())
    bundle = load_bundle(summary["bundle"])
    made_from = bundle.manifest.get("study")
    if made_from != study_name:   # else one study's history beside another's ensemble
        raise DataError(f"{ensemble_dir} holds the ensemble of study {made_from!r}, not {study_name!r}: "
                        f"give --study {made_from} or the --ensemble of {study_name!r}")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    splits = Splits.load(data_dir)
    check_same_labels(bundle.labels, splits.devel.labels, f"the members of {ensemble_dir}", data_dir)   # else an IndexError
    study = optuna.load_study(study_name=study_name,
                              storage=storage or f"sqlite:///{(run_dir / 'study.db').resolve()}")

    base = baseline.fit_baseline(splits.train, splits.devel)
    rows = {"Baseline (functionals + SVM)": [metrics(s.targets, baseline.predict(base, s), s.labels)["uar"]
                                             for s in (splits.devel, splits.test)]}
    for i, name in enumerate(("Best single model", "Second best")):
        if i < len(summary["devel_uar"]["members"]):
            rows[name] = [summary["devel_uar"]["members"][i], summary["test_uar"]["members"][i]]
    rows[f"Ensemble of {len(summary['trials'])} (majority vote)"] = [summary["devel_uar"]["ensemble"],
                                                                    summary["test_uar"]["ensemble"]]
    rows["Ensemble, recorder windows"] = [summary["windowed_uar"]["devel"], summary["windowed_uar"]["test"]]

    ensemble = Ensemble(bundle)
    best = ensemble.sessions[0]
    outputs = [best.run(["probs", "embedding"], {"logmel": f[None]}) for f in splits.devel.features]
    embeddings = np.concatenate([o[1] for o in outputs])
    plot_confusion(np.array(metrics(splits.devel.targets, np.concatenate([o[0] for o in outputs]).argmax(1),
                                    splits.devel.labels)["confusion"]), splits.devel.labels,
                   out / "confusion_best_devel.png", "Best model, devel")
    ensemble_metrics = json.loads((report_dir / "ensemble_metrics.json").read_text())
    plot_confusion(np.array(ensemble_metrics["devel"]["confusion"]), splits.devel.labels,
                   out / "confusion_ensemble_devel.png", "Ensemble, devel")
    plot_class_distribution(splits, out / "class_distribution.png")
    plot_tsne(embeddings, splits.devel.targets, splits.devel.labels, out / "tsne_devel.png")
    importances = plot_study(study, out)

    lines = ["# Search report", "", f"Study `{study_name}`: "
             f"{sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)} completed, "
             f"{sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)} pruned trials; "
             f"ensemble members: trials {summary['trials']}.", "",
             "## Table 1: UAR", "", "| model | devel | test |", "|---|---|---|"]
    lines += [f"| {name} | {d:.3f} | {t:.3f} |" for name, (d, t) in rows.items()]
    lines += ["", "## Figures", ""]
    for png, title in (("confusion_best_devel.png", "Confusion matrix, best model (devel)"),
                       ("confusion_ensemble_devel.png", "Confusion matrix, ensemble (devel)"),
                       ("class_distribution.png", "Class distribution"), ("tsne_devel.png", "t-SNE, devel"),
                       ("optimisation_history.png", "Optimisation history"),
                       ("param_importances.png", "Hyper-parameter importances")):
        lines += [f"### {title}", "", f"![{title}]({png})", ""]
    lines += ["## Hyper-parameter importances", ""] + [f"- {k}: {v:.3f}" for k, v in importances.items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"report": str(out / "report.md"), "table1": rows}
