"""edgemon: species classification on field recorders.

The edge half (this package) needs only numpy, onnxruntime and soundfile at run time; the
training half lives in the separate ``training`` package and is never imported from here.
"""

import os

__version__ = "0.1.0"

# Privacy: onnxruntime (1.32 here, Linux x86-64) creates a telemetry device id and upload queue
# under ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ when its environment starts, at import.
# This variable is its full opt-out, and it must be set before onnxruntime is imported, so it
# lives here, where every edgemon (and training) import passes first. A user may set it to 0.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
