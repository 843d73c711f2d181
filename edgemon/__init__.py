"""edgemon: species classification on field recorders.

The edge half (this package) needs only numpy, onnxruntime and soundfile at run time; the
training half lives in the separate ``training`` package and is never imported from here.
"""

__version__ = "0.1.0"
