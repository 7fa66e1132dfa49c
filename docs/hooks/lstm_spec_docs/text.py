"""Spec text (a cell's title, summary and description) as inline HTML for the pages, the navigation and
the tables.

A spec's prose is plain text in the spec's own notation: ``h_{t-1}``, ``x_t``, ``c~``, ``c[t-1]``,
``|y_t - target_t|^2``, and identifiers of other libraries such as ``recurrent_dropout`` or ``gx_*``.
Passed to Markdown as it is, ``_`` and ``*`` start emphasis, ``|`` splits a table row and the braces stay
raw. :func:`spec_html` turns it into HTML that reads as math where it is math (``h<sub>t−1</sub>``,
``c̃``, ``‖…‖²``), as code where it is an identifier (``<code>recurrent_dropout</code>``), and escapes
every character that Markdown or HTML would read (so the result is safe in a heading, a table cell, an
emphasis or a navigation label; Material renders navigation labels as HTML).
"""

from __future__ import annotations

import html
import re

TOKEN = re.compile(r"""
    (?P<code>`[^`\n]*`)                                            # already code
  | \|(?P<norm>[^|\n]+)\|(?P<normpow>\^\d)?                         # |v|^2 -> ‖v‖²
  | (?P<name>[A-Za-z][A-Za-z0-9]*~?(?:_(?:\{[^{}\n]*\}|[A-Za-z0-9*]+))+)(?P<namepow>\^(?:\d|T|\{[^{}\n]*\}))?
  | (?P<prev>[A-Za-z][A-Za-z0-9]*~?)\[t-1\]                         # h[t-1]
  | (?P<tilde>\b[A-Za-z]~)                                          # c~
  | (?P<pow>\^(?:\d|T|\{[^{}\n]*\}))                               # ^2, ^T, ^{(t+1)}
""", re.X)

SUPERSCRIPT = dict(zip("0123456789T", "⁰¹²³⁴⁵⁶⁷⁸⁹ᵀ", strict=True))
# what Markdown (emphasis, tables, escapes, links) or HTML would read in the remaining plain text
PLAIN_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "*": "&#42;", "_": "&#95;", "|": "&#124;",
                 "\\": "&#92;", "`": "&#96;", "[": "&#91;", "]": "&#93;", "~": "&#126;", "#": "&#35;"}


def _plain(s: str) -> str:
    return "".join(PLAIN_ESCAPES.get(ch, ch) for ch in s)


def _code(s: str) -> str:
    return f"<code>{_plain(s)}</code>"


def _power(p: str | None) -> str:
    if not p:
        return ""
    return f"<sup>{_sub(p[1:])}</sup>" if p.startswith("^{") else SUPERSCRIPT[p[1:]]


def _base(b: str) -> str:
    return _plain(b[:-1]) + "\u0303" if b.endswith("~") else _plain(b)  # c~ -> c with a combining tilde


def _sub(s: str) -> str:
    return _plain(s[1:-1] if s.startswith("{") else s).replace("-", "−")


def is_identifier(base: str, subs: list[str]) -> bool:
    """A name with underscores is an identifier of code (``recurrent_dropout``, ``proj_size``, ``gx_*``,
    ``b_g_ih``), not a subscripted symbol (``x_t``, ``W_hy``, ``loss_t``, ``h_{t-1}``), when a part is a
    wildcard, when it has more than one plain subscript, when both base and subscript are words, or when
    the subscript is longer than a math subscript gets (``go_backwards``; ``c_prev`` is still math)."""
    plain = [s for s in subs if not s.startswith("{")]
    if any("*" in s for s in subs) or len(plain) > 1:
        return True
    return bool(plain) and ((len(base.rstrip("~")) > 2 and len(plain[0]) > 1) or len(plain[0]) > 4)


def _name(token: str, power: str | None) -> str:
    base, *subs = re.findall(r"\{[^{}]*\}|[^_]+", token)
    if is_identifier(base, subs):
        return _code(token) + _power(power)
    return _base(base) + "".join(f"<sub>{_sub(s)}</sub>" for s in subs) + _power(power)


def spec_html(text: str) -> str:
    """Inline HTML for one piece of spec prose (whitespace runs, newlines included, become one space)."""
    text = " ".join(text.split())
    out, pos = [], 0
    for m in TOKEN.finditer(text):
        out.append(_plain(text[pos:m.start()]))
        pos = m.end()
        if m.group("code"):
            out.append(_code(m.group("code")[1:-1]))
        elif m.group("norm"):
            out.append("‖" + spec_html(m.group("norm").strip()) + "‖" + _power(m.group("normpow")))
        elif m.group("name"):
            out.append(_name(m.group("name"), m.group("namepow")))
        elif m.group("prev"):
            out.append(_base(m.group("prev")) + "<sub>t−1</sub>")
        elif m.group("tilde"):
            out.append(_base(m.group("tilde")))
        else:
            out.append(_power(m.group("pow")))
    out.append(_plain(text[pos:]))
    return "".join(out)


SUBSCRIPT = dict(zip("0123456789+−=()aehijklmnoprstuvx", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ", strict=True))


def _plain_sub(m) -> str:
    s = html.unescape(m.group(1))
    return "".join(SUBSCRIPT[ch] for ch in s) if all(ch in SUBSCRIPT for ch in s) else "_" + s


def spec_plain(text: str) -> str:
    """The same text in plain characters (a page's <title>): subscripts in Unicode where it has them."""
    return html.unescape(re.sub(r"<sub>(.*?)</sub>", _plain_sub, re.sub(r"</?code>", "", spec_html(text))))
