"""The detections database and the disk: store, schema, recovery, the one-daemon lock, export with
its cursors, detection tables, the disk budget, and the read-only API other programs may use."""
