"""The booking core: a pure seat-map domain and the Ray actor that owns one show."""
