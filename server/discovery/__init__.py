"""Finding something to watch: browse listings (`browse_api.py`), free-text search with a
cached answer (`search.py`), recommendations (`recommend*.py`) and reviews with moderation
(`reviews*.py`)."""
