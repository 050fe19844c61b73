"""Ingest: readers of transcripts, codebooks and human coding files (CSV, REFI-QDA), and chunking."""
