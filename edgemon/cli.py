"""``edgemon``: the recorder's command line. An adapter: parse options, call one function, and
turn an ``EdgemonError`` into a one-line message and a non-zero exit."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgemon.errors import EdgemonError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Species detections from field recorders, on the recorder.")

ModelsOpt = Annotated[Optional[Path], typer.Option("--models", help="Model bundle directory (default: the embedded bundle).")]


def _fail(exc: EdgemonError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@app.command()
def info(models: ModelsOpt = None):
    """Describe a model bundle: labels, members and their devel/test UAR, windows."""
    from edgemon.bundle import default_bundle_path, load_bundle

    try:
        bundle = load_bundle(models or default_bundle_path())
    except EdgemonError as exc:
        raise _fail(exc)
    typer.echo(json.dumps({"bundle_id": bundle.bundle_id, "path": str(bundle.path),
                           "labels": bundle.labels, "window_s": bundle.window_s, "hop_s": bundle.hop_s,
                           "members": [m.__dict__ for m in bundle.members],
                           "frontend": bundle.frontend.to_dict()}, indent=2))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app()
