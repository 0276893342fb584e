"""Experiments made of many runs: the sweep engine (grids of ``fdalign train`` runs), the report
across runs (tables, paired differences, published numbers, plots) and the shipped presets."""
