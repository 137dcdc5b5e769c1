"""Benchmark parts beyond the core four, one module per part (see PLUGIN_PARTS in scripts/bench.py)."""
