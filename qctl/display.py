"""Text for people: column layout, terminal widths, relative times, colour.

Pure functions that return strings; `queuectl.py` decides where they are printed.
Nothing here is used for `--json` output, which never has colour or extra text.
"""

import os
import re
import time

from .jobs import is_control

ELLIPSIS = "\u2026"
MIN_CUT_WIDTH = 5      # a column cut to fit is never narrower than this (or its header)
COLUMN_GAP = 2
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_STATE_COLOURS = {"pending": "33", "processing": "36", "completed": "32", "failed": "35", "dead": "31"}


def colour_enabled(stream, environ=None, *, windows=None):
    """Colour only for a terminal, and never when NO_COLOR is set (no-color.org) or TERM=dumb.

    The Windows console shows escape codes as text unless it is Windows Terminal
    (WT_SESSION) or a terminal that sets TERM (mintty, ConEmu with ANSICON).
    """
    environ = os.environ if environ is None else environ
    windows = os.name == "nt" if windows is None else windows
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return not windows or any(environ.get(name) for name in ("WT_SESSION", "TERM", "ANSICON"))


def paint_state(state, enabled):
    """`state` in its colour when `enabled`, else unchanged."""
    if not enabled:
        return state
    return "\x1b[%sm%s\x1b[0m" % (_STATE_COLOURS.get(state, "0"), state)


def display_width(text):
    """Columns `text` takes on a terminal: colour codes take none, wide (CJK) characters two."""
    text = _ANSI_RE.sub("", text)
    if text.isascii():
        return len(text)
    import unicodedata
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
               for ch in text)


def fit(text, width):
    """`text` cut to `width` columns, ending in an ellipsis when cut."""
    if display_width(text) <= width:
        return text
    kept, used = [], 0
    for ch in text:
        used += display_width(ch)
        if used > width - 1:
            break
        kept.append(ch)
    return "".join(kept) + ELLIPSIS


def printable(text, keep=""):
    """`text` with control characters (other than those in `keep`) shown as \\xNN escapes,
    so a job's command cannot move the cursor or recolour the terminal."""
    return "".join(ch if ch in keep or not is_control(ch) else "\\x%02x" % ord(ch) if ord(ch) < 256
                   else "\\u%04x" % ord(ch) for ch in text)


def one_line(text):
    """`text` on one line: runs of whitespace (newlines too) become one space."""
    return printable(" ".join(text.split()))


def layout(headers, rows, *, width, flex=(), right=()):
    """Lines of an aligned table at most `width` columns wide.

    Columns in `flex` may be cut (with an ellipsis) to fit: the widest of them
    gives up a column first, so a long command shrinks before a short id does.
    Other columns are never cut; if they alone are wider than `width`, the
    lines are too.
    """
    flex = (flex,) if isinstance(flex, int) else tuple(flex)
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max([display_width(h)] + [display_width(r[i]) for r in rows]) for i, h in enumerate(headers)]
    floors = {i: max(display_width(headers[i]), MIN_CUT_WIDTH) for i in flex}
    excess = sum(widths) + COLUMN_GAP * (len(widths) - 1) - width
    while excess > 0:
        cuttable = [i for i in flex if widths[i] > floors[i]]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda i: widths[i])
        others = [widths[i] for i in cuttable if i != widest]
        # Cut the widest down to the next widest (or as far as needed) in one go.
        step = min(excess, widths[widest] - max(others + [floors[widest]]) or 1)
        widths[widest] -= step
        excess -= step
    lines = []
    for row in [list(headers)] + rows:
        cells = []
        for i, cell in enumerate(row):
            if i in flex:
                cell = fit(cell, widths[i])
            pad = " " * (widths[i] - display_width(cell))
            cells.append(pad + cell if i in right else cell + pad)
        lines.append((" " * COLUMN_GAP).join(cells).rstrip())
    return lines


def ago(seconds, now=None):
    """A timestamp relative to `now`: '12s ago', 'in 4s', '3m ago', '2d ago'; 'now' within a second."""
    if seconds is None:
        return "-"
    delta = (time.time() if now is None else now) - seconds
    span = abs(delta)
    if span < 1:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if span >= size:
            text = "%d%s" % (span // size, unit)
            break
    return text + " ago" if delta > 0 else "in " + text
