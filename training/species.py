"""Scientific and common names of the labels a bundle may carry (manifest ``label_names``).

One table for every bundle training writes; ``edgemon info``, exports and Raven tables read the
names from the bundle. A label missing here gets no names (background never has any).
"""

from __future__ import annotations

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
