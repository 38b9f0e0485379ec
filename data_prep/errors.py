"""The one exception type of data_prep.

Every problem with the user's input (a missing file, a corrupt archive, a bad
CSV line, an unknown class folder, an existing output) is raised as
:class:`PrepError` with a one-line message that names the file, the line or
entry, what was expected and what was found. The CLI prints it as
``error: <message>`` and exits with status 2 (bad input); Python callers can catch it,
as a ``ValueError`` too (the convention of every gpunet API for bad input).
"""

from __future__ import annotations

import re


class PrepError(ValueError):
    """A conversion cannot go on because of its input; ``str(e)`` is the user-facing line
    (one line: the text of a library's multi-line exception is joined)."""

    def __init__(self, message):
        super().__init__(re.sub(r"\s*\n\s*", " ", str(message)).strip())
