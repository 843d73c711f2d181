"""Recordings on disk become detections: the watcher, recording files' start times and
completeness, one-shot classify, analysis in a child process, backlog progress, reanalysis."""
