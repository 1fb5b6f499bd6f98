"""What is on: theatres, screens and their seat layouts, movies, shows (`model.py`, the wire
schema), their Redis records and listing indexes (`service.py`), the per-process show
cache the hold path reads (`show_cache.py`), and the seat map as customers see it
(`seat_status.py`)."""
