"""A live microphone becomes detections: capture, the analysis worker, its threads, the stream's
time base, coverage, saved clips, the host clock and the live path's database writer thread."""
