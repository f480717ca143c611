"""The pipeline stages (one module each) and the ``jetscan`` command line."""

__all__ = ["generate", "cli"]
