"""The export's one error type: what went wrong, naming the file, field or value."""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export that cannot go on (bad input, unsupported model, full disk, failed verification).

    Nothing is left under the output's final names when it is raised.
    """
