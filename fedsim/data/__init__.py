"""Data: datasets (generated or from local files), partitioners, and the per-client split."""
