"""jetscan's exception tree (one root, as optuna's ``exceptions.py``).

Every message gives the rule, the offending value and the fix.
"""

from __future__ import annotations

__all__ = ["JetscanError", "ConfigError", "StorageError", "RunnerError", "JetscanWarning"]


class JetscanError(Exception):
    """Root of every error jetscan raises on purpose."""


class ConfigError(JetscanError, ValueError):
    """A study or stage configuration is invalid (raised before any work starts)."""


class StorageError(JetscanError):
    """A store is missing, was made by a different study, or holds torn data."""


class RunnerError(JetscanError):
    """A runner (local, Ray) could not start or lost its workers."""


class JetscanWarning(UserWarning):
    """Warnings jetscan emits; the test-suite turns them into errors."""
