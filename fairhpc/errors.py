"""User errors: a bad setting, data file or path, reported as one line and exit code 2 (no traceback).

Every class here derives from :class:`FairhpcError`, which the ``fairhpc`` command catches by type and
prints as ``fairhpc: <kind> error: <message>``.  Anything else is a bug and keeps its traceback.
The classes derive from ValueError too, so callers that caught ValueError keep working.
"""

from __future__ import annotations

# reason -> what it means: the keys of the skip Counter and of data_stats.json "skipped" (DataError.reason)
SKIP_REASONS = {
    "invalid_utf8": "a line (or CSV record) that is not UTF-8 text",
    "invalid_json": "a JSONL line that is not valid JSON",
    "not_an_object": "a row that is not a JSON object / mapping",
    "missing_field": "a required field (prompt, chosen, rejected) is absent or null",
    "wrong_type": "a field of the wrong type (e.g. chosen is a number, a message without content)",
    "empty_response": "chosen or rejected has no text",
    "identical": "chosen and rejected are the same response",
    "bad_conversation": "a transcript or message list that cannot be split into prompt and response, "
                        "or a message with an unknown role",
    "undetected_format": "no format (standard / trl / hh) fits the row",
}


class FairhpcError(ValueError):
    """A user error: the message names what is wrong (key, file and line, path) and what is allowed."""

    kind = "fairhpc"


class ConfigError(FairhpcError):
    """A configuration value or command-line option is missing, unknown or out of range."""

    kind = "configuration"


class ModelPathError(ConfigError):
    """A model path that does not exist or holds no loadable model (checked before any data is read)."""

    kind = "model path"


class DataError(FairhpcError):
    """A data file or row is unusable; the message names the file, the line/row and the field.

    ``reason`` is one of :data:`SKIP_REASONS` for row-level problems (None for whole-file problems, which
    ``bad_rows="skip"`` cannot skip)."""

    kind = "data"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        if reason is not None and reason not in SKIP_REASONS:
            raise ValueError(f"DataError: unknown reason {reason!r}; add it to SKIP_REASONS")
        self.reason = reason


class ReportError(FairhpcError):
    """A run directory lacks a file the report needs, or a file is unreadable."""

    kind = "report"
