"""Test helpers shipped with quallm: a local OpenAI-compatible server for integration tests and benchmarks."""
