"""Benchmarks: scripts, not tests. Each writes a JSON result under bench/results/ and prints one line."""
