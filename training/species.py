"""Scientific and common names of the labels a bundle may carry (manifest ``label_names``).

A data set's own ``lab/label_names.csv`` where it has one, else the Borneo table below, for every
bundle training writes; ``edgemon info``, exports and Raven tables read the names from the
bundle. A label without names gets none (background never has any).
"""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

from training.errors import DataError

# Borneo (Danum Valley) call types; names after the IUCN Red List.
LABEL_NAMES: dict[str, dict[str, str]] = {
    "gibbon_duet": {"scientific": "Hylobates funereus", "common": "northern grey gibbon", "call_type": "duet"},
    "great_argus": {"scientific": "Argusianus argus", "common": "great argus"},
    "hornbill_helmeted": {"scientific": "Rhinoplax vigil", "common": "helmeted hornbill"},
    "hornbill_rhino": {"scientific": "Buceros rhinoceros", "common": "rhinoceros hornbill"},
}


def label_names(labels: list[str] | tuple[str, ...]) -> dict[str, dict[str, str]]:
    """The table's entries for ``labels`` (those it knows), in label order."""
    return {label: dict(LABEL_NAMES[label]) for label in labels if label in LABEL_NAMES}


NAMES_FILE = "label_names.csv"   # in a data set's lab/: the names of its own labels


def read_label_names(data_dir, labels) -> dict[str, dict[str, str]] | None:
    """The names a data set gives its own labels in ``lab/label_names.csv`` (columns ``label,
    scientific,common`` and optionally ``call_type``), checked against ``labels``; None when it
    has no such file. When present it replaces the table above for that data set's bundles, so
    a label that happens to share a Borneo name (``gibbon_duet`` for another gibbon) is not
    given the Borneo species' names, and a user's own species get theirs without editing code."""
    path = Path(data_dir) / "lab" / NAMES_FILE
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"label", "scientific", "common"} <= set(reader.fieldnames):
                raise DataError(f"{path}: needs the columns 'label', 'scientific' and 'common' "
                                f"(optional: 'call_type')")
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a UTF-8 CSV ({str(exc).splitlines()[0]})") from exc
    names: dict[str, dict[str, str]] = {}
    for line, row in rows:
        label = unicodedata.normalize("NFC", (row.get("label") or "").strip())   # as the lists' (training.data)
        if label not in labels or label == "background":
            known = ", ".join(sorted(name for name in labels if name != "background"))
            raise DataError(f"{path}: line {line}: label {label!r} is not one of the call labels ({known})")
        if label in names:
            raise DataError(f"{path}: line {line}: label {label!r} is named twice")
        entry = {key: (row.get(key) or "").strip() for key in ("scientific", "common", "call_type")}
        for key in ("scientific", "common"):
            if not entry[key] or not entry[key].isprintable():
                raise DataError(f"{path}: line {line}: {label!r} needs a {key} name (printable text)")
        if not entry["call_type"]:
            del entry["call_type"]
        names[label] = entry
    return {label: names[label] for label in labels if label in names}
