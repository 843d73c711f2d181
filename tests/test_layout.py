"""The package layout's import rules, read from the source (every import statement, those inside
functions too, since an import hidden in a function is still a dependency):

- no import cycle among edgemon's modules;
- imports go down the layers of ``LAYERS`` only: analysis imports no other package, storage only
  analysis, files/live/review only what lies below them and never each other, and no package
  imports the entry points (cli, daemon) or the service modules above it;
- training imports only ``TRAINING_MAY_IMPORT`` of edgemon.
"""

from __future__ import annotations

import ast
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from edgemon.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import its own unit, and any unit of a lower layer; units of one
# layer are siblings that do not import each other.
LAYERS: list[tuple[str, ...]] = [
    # what every part may use: errors, UTC text, safe text, signals, the console's exit statuses
    ("edgemon.base",),
    ("edgemon.analysis",),                                      # audio in, decisions out
    ("edgemon.storage",),                                       # the database and the disk
    ("edgemon.files", "edgemon.live", "edgemon.review"),        # the three ways in
    ("edgemon.service",),                                       # settings, health, status
    # the fleet: reads the service settings and sends `status`'s report
    ("edgemon.sync",),
    ("edgemon.entry",),                                         # daemon, cli
]
BASE = {"edgemon", "edgemon.errors", "edgemon.utc", "edgemon.safetext", "edgemon.signals", "edgemon.console",
        "edgemon.backoff", "edgemon.durable", "edgemon.amounts"}
SERVICE = {"edgemon.config", "edgemon.settings_registry", "edgemon.health", "edgemon.status"}
ENTRY = {"edgemon.daemon", "edgemon.cli", "edgemon.cli_common", "edgemon.cli_review", "edgemon.cli_fleet",
         "edgemon.__main__"}

# What the training side may use of the recorder: the shared analysis, the named errors, the
# command line's console and signals (SIGTERM taken as Ctrl-C, so a stopped `fit` keeps its finished
# epochs), the version, and the database's read-only API (site adaptation reads reviews). Nothing
# that writes the recorder's database or runs it.
TRAINING_MAY_IMPORT = ("edgemon", "edgemon.analysis", "edgemon.errors", "edgemon.console", "edgemon.signals",
                       "edgemon.storage.readonly")


def unit_of(module: str, packages: set[str]) -> str:
    """The layer unit of an edgemon module: its subpackage (one of ``packages``), or one of
    base/service/entry for a top-level module."""
    for unit, members in (("edgemon.base", BASE), ("edgemon.service", SERVICE), ("edgemon.entry", ENTRY)):
        if module in members:
            return unit
    package = ".".join(module.split(".")[:2])
    if package in packages:
        return package
    raise AssertionError(f"{module}: a top-level module in no layer; add it to BASE, SERVICE or ENTRY")


def rank_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_under(root: Path, package: str) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """Modules (of ``known``) that ``path`` imports anywhere in its body: ``from a import b`` counts
    as ``a.b`` when that is a module, else as ``a``; relative imports are resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known or m.split(".")[0] in ("edgemon", "training")}


def import_graph(root: Path, package: str, known: set[str]) -> dict[str, set[str]]:
    return {m: imports_of(p, m, known) - {m} for m, p in modules_under(root, package).items()}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n in graph and not state.get(n):
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if not state.get(m):
            found = visit(m)
            if found:
                return found
    return None


def packages_of(graph: dict[str, set[str]]) -> set[str]:
    return {m for m in graph if any(other.startswith(m + ".") for other in graph)}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a imports b (unit x may not import unit y)' for every import against ``LAYERS``."""
    packages = packages_of(graph)
    problems = []
    for module, targets in sorted(graph.items()):
        source = unit_of(module, packages)
        for target in sorted(t for t in targets if t.split(".")[0] == "edgemon"):
            dest = unit_of(target, packages)
            if dest != source and rank_of(dest) >= rank_of(source):
                problems.append(f"{module} imports {target} ({source} may not import {dest})")
    return problems


def training_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} imports {target} (training may import only {', '.join(TRAINING_MAY_IMPORT)})"
            for module, targets in sorted(graph.items()) for target in sorted(targets)
            if target.split(".")[0] == "edgemon"
            and not any(target == allowed or target.startswith(allowed + ".") and allowed != "edgemon"
                        for allowed in TRAINING_MAY_IMPORT)]


@pytest.fixture(scope="module")
def edgemon_graph() -> dict[str, set[str]]:
    known = set(modules_under(ROOT, "edgemon"))
    return import_graph(ROOT, "edgemon", known)


def test_edgemon_has_no_import_cycle(edgemon_graph):
    cycle = cycle_in(edgemon_graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_edgemon_imports_go_down_the_layers(edgemon_graph):
    problems = layer_violations(edgemon_graph)
    assert not problems, "\n".join(problems)


def test_training_imports_only_analysis_errors_and_the_read_only_storage():
    known = set(modules_under(ROOT, "edgemon")) | set(modules_under(ROOT, "training"))
    problems = training_violations(import_graph(ROOT, "training", known))
    assert not problems, "\n".join(problems)


def test_every_edgemon_module_has_a_layer(edgemon_graph):
    packages = packages_of(edgemon_graph)
    for module in edgemon_graph:
        rank_of(unit_of(module, packages))


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_rules_name_a_hidden_cycle_and_an_upward_import(tmp_path):
    # A check that cannot fail proves nothing: plant a cycle hidden in a function, an upward
    # import (analysis -> storage) and a relative one (storage -> cli), and see each named.
    root = _tree(tmp_path, {
        "edgemon/__init__.py": "",
        "edgemon/cli.py": "",
        "edgemon/analysis/__init__.py": "",
        "edgemon/analysis/a.py": "def f():\n    from edgemon.storage import s\n",
        "edgemon/storage/__init__.py": "",
        "edgemon/storage/s.py": "from edgemon.analysis.a import f\nfrom .. import cli\n",
    })
    known = set(modules_under(root, "edgemon"))
    graph = import_graph(root, "edgemon", known)
    assert cycle_in(graph) == ["edgemon.analysis.a", "edgemon.storage.s", "edgemon.analysis.a"]
    assert layer_violations(graph) == [
        "edgemon.analysis.a imports edgemon.storage.s (edgemon.analysis may not import edgemon.storage)",
        "edgemon.storage.s imports edgemon.cli (edgemon.storage may not import edgemon.entry)",
    ]


def test_the_training_rule_names_a_forbidden_import(tmp_path):
    root = _tree(tmp_path, {
        "training/__init__.py": "",
        "training/t.py": ("from edgemon.analysis import audio\nfrom edgemon.storage.readonly import reviewed\n"
                          "def f():\n    from edgemon.storage.store import Store\n    import edgemon.review.app\n"),
    })
    graph = import_graph(root, "training", set())
    assert training_violations(graph) == [
        "training.t imports edgemon.review.app (training may import only edgemon, edgemon.analysis, "
        "edgemon.errors, edgemon.console, edgemon.signals, edgemon.storage.readonly)",
        "training.t imports edgemon.storage.store (training may import only edgemon, edgemon.analysis, "
        "edgemon.errors, edgemon.console, edgemon.signals, edgemon.storage.readonly)",
    ]


def test_names_stored_in_databases_survived_the_move(tmp_path):
    # The migration set's name is written into every detections database; renaming it with its
    # module (edgemon.store -> edgemon.storage.store) would make every existing database apply
    # all migrations again at the next start.
    Store(tmp_path / "d.db").close()
    with closing(sqlite3.connect(tmp_path / "d.db")) as conn:
        sets = {row[0] for row in conn.execute("SELECT DISTINCT migration_set FROM _sqlite_migrations")}
    assert sets == {"edgemon.store"}


def imports_from_tests(path: Path) -> list[str]:
    """'path:line imports tests...' for every import of the tests package in ``path``, those inside
    functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        found += [f"{path}:{node.lineno} imports {name}" for name in names
                  if name == "tests" or name.startswith("tests.")]
    return found


def test_bench_scripts_and_devtools_import_nothing_from_tests():
    # What bench/ and scripts/ need lives in devtools/; tests/ is not a library anyone else may
    # lean on (a test helper changed for a test would silently change a bench's figures).
    problems = [problem for folder in ("bench", "scripts", "devtools")
                for path in sorted((ROOT / folder).rglob("*.py")) for problem in imports_from_tests(path)]
    assert not problems, "\n".join(problems)


def test_the_tests_import_rule_names_the_file(tmp_path):
    root = _tree(tmp_path, {"bench/b.py": "import os\ndef f():\n    from tests.sync_helpers import fleet_server\n",
                            "scripts/s.py": "import tests.conftest\nfrom testsuite import x\n"})
    assert imports_from_tests(root / "bench/b.py") == [f"{root / 'bench/b.py'}:3 imports tests.sync_helpers"]
    assert imports_from_tests(root / "scripts/s.py") == [f"{root / 'scripts/s.py'}:1 imports tests.conftest"]
