"""The one exception type of data_prep.

Every problem with the user's input (a missing file, a corrupt archive, a bad
CSV line, an unknown class folder, an existing output) is raised as
:class:`PrepError` with a one-line message that names the file, the line or
entry, what was expected and what was found. The CLI prints it as
``error: <message>`` and exits with status 1; Python callers can catch it.
"""
from __future__ import annotations


class PrepError(Exception):
    """A conversion cannot go on because of its input; ``str(e)`` is the user-facing line."""


def at(where: str, entry: str | None, message: str) -> PrepError:
    """``PrepError("<where>: <entry>: <message>")``, leaving out an empty entry.

    where: the source as the user named it (file or folder); entry: a member,
    ``line N``, or None.
    """
    parts = [str(where)] + ([str(entry)] if entry else []) + [message]
    return PrepError(": ".join(parts[:-1]) + ": " + parts[-1])
