"""Coding: prompts, answer types, the re-ask loop, extraction, summaries and discovery's open coding."""
