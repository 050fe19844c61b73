"""Shared values: spans of text (sentences, normalisation, quote finding)."""
