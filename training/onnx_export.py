"""ONNX export of a trained model, per the model-file contract in README ("Model bundles").

Input ``logmel`` float32 ``[batch, frames, F]``, F the bundle frontend's ``n_features`` (128 for
log-mel or PCEN, 256 for ``logmel_pcen``; dynamic batch and frames, any length >= 1);
outputs ``probs`` ``[batch, classes]`` and ``embedding`` ``[batch, h]``. Frame pairing happens
inside the graph; the BiLSTM is one standard bidirectional LSTM, exported as native ONNX LSTM
nodes; labels, frontend and provenance travel in ``metadata_props``.
"""

from __future__ import annotations

import dataclasses
import io
import datetime as dt
import json
import logging
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch
from google.protobuf.message import DecodeError
from torch import nn

import edgemon
from edgemon.analysis.frontend import FrontendConfig
from training.errors import DataError
from training.out_dirs import write_whole
from training.model import PrimateBiLSTM, centre_bands, pair_frames


class ExportableModel(nn.Module):
    """The trained network for exact-length inputs: standard BiLSTM, softmax output."""

    def __init__(self, model: PrimateBiLSTM):
        super().__init__()
        self.centre = model.config.centre_bands
        self.lstm = model.encoder.to_bidirectional()
        self.mlp = model.mlp
        self.head = model.head

    def forward(self, logmel: torch.Tensor):
        if self.centre:
            logmel = centre_bands(logmel)
        hidden, _ = self.lstm(pair_frames(logmel))
        pooled = torch.cat([hidden.mean(1), hidden.amax(1), hidden.amin(1)], dim=1)
        embedding = self.mlp(pooled)
        return torch.softmax(self.head(embedding), dim=1), embedding


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"edgemon {edgemon.__version__}" + (f" ({commit})" if commit else "")


def export_onnx(model: PrimateBiLSTM, path: Path, labels: tuple[str, ...], frontend: FrontendConfig,
                metadata: dict | None = None) -> Path:
    """Write ``model`` to ``path`` as ONNX with self-describing metadata; returns ``path``."""
    wrapper = ExportableModel(model).eval()
    example = torch.randn(2, 37, model.config.n_mels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = io.BytesIO()   # exported in memory, the file written once, whole (``write_whole``)
    with warnings.catch_warnings():
        # The tracer warns about Python-side shape checks and LSTM batch sizes; the parity test
        # (tests/test_onnx_export.py) shows the graph is right for any batch and length.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), graph, dynamo=False, opset_version=17,
                          input_names=["logmel"], output_names=["probs", "embedding"],
                          dynamic_axes={"logmel": {0: "batch", 1: "frames"}, "probs": {0: "batch"},
                                        "embedding": {0: "batch"}})
    proto = onnx.load_from_string(graph.getvalue())
    props = {
        "labels": json.dumps(list(labels)),
        "frontend": json.dumps(frontend.to_dict()),
        "model_config": json.dumps(model.config.__dict__),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()},
    }
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    # A full disk or a kill used to leave a model cut short, or one without its metadata (written
    # twice: the graph, then the graph with metadata), where a whole one had been.
    return write_whole(path, proto.SerializeToString())


def load_model(path: Path) -> onnx.ModelProto:
    """The model edgemon-train exported at ``path``; DataError naming it when it is none (a file cut
    short or emptied gave a protobuf traceback, or a KeyError)."""
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except (OSError, ValueError, DecodeError, onnx.checker.ValidationError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"{path}: not a readable ONNX model ({first})") from None
    if "frontend" not in {p.key for p in proto.metadata_props}:
        raise DataError(f"{path}: no frontend in its metadata: not a model edgemon-train exported")
    return proto


class _QuantiserChatter(logging.Filter):
    """Drops what onnxruntime's quantiser logs on the root logger below an error ("Please consider
    to run pre-processing before quantization", a line per tensor): noise around every --int8."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantisation of weights (LSTM and MatMul); about 4x smaller and faster on CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    load_model(src)
    quiet = _QuantiserChatter()   # it logs advice for image models on the root logger, per tensor
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().removeFilter(quiet)
    proto = onnx.load(str(dst))
    props = {p.key: p.value for p in proto.metadata_props}
    props["precision"] = "int8"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(dst))
    return Path(dst)


def read_columns(src: Path, dst: Path, frontend: FrontendConfig) -> Path:
    """Write ``src`` to ``dst`` as a member of a bundle whose frontend is ``frontend``.

    A model trained on log-mel or on PCEN joins a ``logmel_pcen`` bundle by reading its own
    columns of that wider input: a ``Slice`` in front of the graph, the bundle's frontend in the
    metadata (what the recorder checks), the model's own kept as ``member_frontend``. One frontend
    stream then feeds members trained on different features; a model already on ``frontend`` is
    copied unchanged.
    """
    proto = load_model(src)
    props = {p.key: p.value for p in proto.metadata_props}
    own = FrontendConfig.from_dict(json.loads(props["frontend"]))
    if own == frontend:
        shutil.copyfile(src, dst)
        return Path(dst)
    if dataclasses.replace(own, kind=frontend.kind) != frontend:
        raise DataError(f"{src}: frontend parameters differ from the bundle's beyond its kind")
    start, stop = frontend.columns_of(own.kind)
    graph = proto.graph
    source = graph.input[0].name
    columns = f"{source}_columns"
    for node in graph.node:
        node.input[:] = [columns if name == source else name for name in node.input]
    graph.initializer.extend([onnx.numpy_helper.from_array(np.array([v], np.int64), name)
                              for v, name in ((start, "columns_start"), (stop, "columns_stop"), (2, "columns_axis"))])
    graph.node.insert(0, onnx.helper.make_node("Slice", [source, "columns_start", "columns_stop", "columns_axis"],
                                               [columns], name="read_columns"))
    graph.input[0].type.tensor_type.shape.dim[2].dim_value = frontend.n_features
    props.update(frontend=json.dumps(frontend.to_dict()), member_frontend=props["frontend"],
                 input_columns=json.dumps([start, stop]))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))
    return Path(dst)
