"""The live seat map: one WebSocket per viewer, fed from the shows' event streams by one
reader per process (`hub.py`), with `since=` resume and snapshots."""
