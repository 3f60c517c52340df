"""The class report as one self-contained HTML page: figures as embedded PNG, every student text escaped.

Nothing a student wrote is live: names, ids, messages and code go through :func:`html.escape` (after
:func:`autograder.safe_text.shown` for text shown as a line), and the code of similar pairs is copydetect's escaped
HTML with only our ``<mark>`` tags added. The page loads nothing from the network.
"""

from __future__ import annotations

import base64
import html

from ..safe_text import shown

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
img{max-width:100%}td pre{max-width:420px}pre{background:#f8f8f8;padding:.5em;overflow-x:auto;font-size:.85em;margin:0}
mark{background:#ffe08a}.lead{background:#eef4ff;border-left:4px solid #4477aa;padding:.5em 1em}"""


def text(value: object) -> str:
    """Student or LMS text as safe HTML: control characters shown as escapes, markup escaped."""
    return html.escape(shown(value))


def image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def table(headers: list[str], rows: list[list[str]]) -> str:
    """An HTML table; ``headers`` are plain text, the cells already HTML."""
    head = "".join(f"<th>{html.escape(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def feedback_link(student: str, stage: str) -> str:
    """A link to the student's feedback page of ``stage`` (written by ``feedback``, beside ``report/``)."""
    target = html.escape(f"../feedback/{student}/{stage}/{stage}.html", quote=True)
    return f'<a href="{target}">{text(student)}</a>'


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """The whole page: ``sections`` are (heading, HTML body) pairs."""
    body = "".join(f"<h2>{html.escape(heading)}</h2>\n{content}\n" for heading, content in sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n{body}</body></html>\n")
