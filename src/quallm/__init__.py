"""quallm: code qualitative interview transcripts with a language model, grounded in verbatim quotes."""

__version__ = "0.1.0"
