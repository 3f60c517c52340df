"""Text that students and LMSs chose (ids, names, file names), made safe to print, render or write to CSV.

- :func:`shown`: control characters (terminal escape sequences, newlines, NUL) and invisible or reordering
  Unicode (zero-width spaces, bidirectional overrides) become visible escapes, so a name can neither move the
  cursor, recolour the terminal nor hide or reorder the text around it.
- :func:`csv_cell`: a cell a spreadsheet would evaluate as a formula (it begins with ``= + - @``, a tab or a
  carriage return; OWASP "CSV injection") gets a leading ``'``, which spreadsheets show as text.

HTML needs :func:`html.escape` on top of :func:`shown`.
"""

from __future__ import annotations

import re

_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: object) -> str:
    """``text`` with every control or invisible character written as ``\\xNN`` or ``\\uNNNN``."""
    return _INVISIBLE.sub(_escape, str(text))


def csv_cell(text: object) -> str:
    """``text`` as :func:`shown` writes it, with a leading ``'`` when a spreadsheet would read it as a formula."""
    raw = str(text)
    return ("'" if raw.startswith(FORMULA_STARTS) else "") + shown(raw)
