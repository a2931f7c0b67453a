"""Benchmarks: scripts that print one JSON line per figure (see BENCHMARKS.md), not tests."""
