"""Credentials never reach a message, a traceback or a log: ``mask`` hides every password form in a text.

Forms masked (issue 24): the password of a URL's user-info, also one holding an unencoded ``@``
(``postgresql://alice:ab@S3cret@host/db`` -> ``postgresql://alice:***@host/db``); a ``password=``
(``passwd``, ``pwd``, ``sslpassword``) setting in a query string or a libpq ``key=value`` string;
``PGPASSWORD``/``MYSQL_PWD``-style environment settings. Masking errs on the side of hiding more.
``MaskingFilter`` applies it to log records; ``gpunet.cli.common`` to every error line and to the
``--debug`` traceback.
"""

from __future__ import annotations

import logging
import re

# scheme://user:PASSWORD@host — PASSWORD runs to the last "@" before the host (it may hold "@" itself)
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)(?P<pw>[^\s'\"]*)@(?P<host>[^@\s/'\"?#]*)"
    r"(?=[/\s?#'\"]|$)"
)
_SETTING = re.compile(
    r"(?i)(?P<key>\b(?:pg|mysql_)?(?:password|passwd|pwd)|\bsslpassword)(?P<eq>\s*=\s*)(?P<value>[^&\s'\",;)]+)"
)
MASK = "***"


def mask(text) -> str:
    """``text`` with every credential replaced by ``***`` (any object is first made a string)."""
    text = str(text)
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@{m['host']}", text)
    return _SETTING.sub(lambda m: f"{m['key']}{m['eq']}{MASK}", text)


class MaskingFilter(logging.Filter):
    """A logging filter that masks credentials in the record's message (and its traceback text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True


def guard_logging(*names: str):
    """Add ``MaskingFilter`` to the handlers of the root logger and of the loggers ``names``."""
    for name in ("",) + names:
        for handler in logging.getLogger(name or None).handlers:
            if not any(isinstance(f, MaskingFilter) for f in handler.filters):
                handler.addFilter(MaskingFilter())
