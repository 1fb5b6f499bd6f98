"""Load tests (Locust scenarios) and benchmarks for Book My Movie."""
