"""Which line of a template a line of generated ASL came from, for iasl's error messages."""

from __future__ import annotations

import re

_TAG_RE = re.compile(r"(\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\})")


def _line_pattern(template_line: str) -> re.Pattern[str] | None:
    """A regex matching what one template line renders to; ``None`` for pure tag lines."""
    stripped = template_line.strip()
    if not stripped or re.fullmatch(r"(\{%.*?%\}|\{#.*?#\})+", stripped):
        return None
    parts = _TAG_RE.split(stripped)
    body = "".join(".*" if _TAG_RE.fullmatch(p) else re.escape(p) for p in parts)
    return re.compile(rf"^\s*{body}\s*$")


def template_line(template: str, rendered: str, line: int) -> int | None:
    """The line of ``templates/<template>`` that produced line ``line`` of ``rendered``.

    Template lines are turned into patterns (static text literal, every
    ``{{ ... }}`` a wildcard) and matched against the rendered lines in order:
    each rendered line is matched to the first template line after the
    previous match, wrapping back for loops.  A line that matches nothing (its
    static text was damaged) is attributed to the template line after the
    previous match.  ``None`` when nothing can be attributed.
    """
    from importlib import resources  # only when a message needs a template line

    source = resources.files("pvdesc.templates").joinpath(template).read_text().splitlines()
    usable = [(i + 1, p) for i, t in enumerate(source) if (p := _line_pattern(t)) is not None]
    if not usable:
        return None
    cursor = -1
    found: int | None = None
    for text in rendered.splitlines()[:line]:
        order = [*range(cursor + 1 if cursor >= 0 else 0, len(usable)), *range(0, cursor + 1)]
        hit = next((k for k in order if usable[k][1].match(text)), None)
        if hit is None:
            nxt = min(cursor + 1, len(usable) - 1)
            found = usable[nxt][0]
            continue
        cursor = hit
        found = usable[hit][0]
    return found
