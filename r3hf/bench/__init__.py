"""Benchmarks of r3hf against the code paths users run today (`r3hf bench`, benchmarks/)."""
