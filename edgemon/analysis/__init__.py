"""Audio in, decisions out: decoding, the shared frontend, windows, the bundle and its ensemble, the
analyzer and its decisions. Imports no other edgemon package (training uses it as is)."""
