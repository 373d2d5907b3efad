"""Map sizes onto a drawing axis: to scale where the sizes allow it, log-compressed where not.

The terminal bar and the SVG's vertical axis both lay the map's rows end to end
with :func:`scale`; each :class:`Extent` says whether its length is to scale,
compressed (drawn with a break mark) or enlarged (so a label fits).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import NamedTuple


class Scaling(enum.StrEnum):
    """How a drawn extent relates to the size it stands for."""

    TO_SCALE = "to-scale"
    COMPRESSED = "compressed"
    ENLARGED = "enlarged"


class Extent(NamedTuple):
    """Where a size lands on a drawing axis.

    Attributes:
        offset: start, in drawing units.
        length: length, in drawing units.
        scaling: to scale, compressed (log) or enlarged (to the minimum).
    """

    offset: float
    length: float
    scaling: Scaling


#: Above the cap, each e-fold of size adds this fraction of the cap.
LOG_SLOPE = 0.35
#: A compressed gap is drawn at most this many minimum extents long (before its log growth).
GAP_CAP_MINIMA = 2.0


def _stretch(x: float, cap: float, minimum: float) -> tuple[float, Scaling]:
    """Linear up to ``cap``, logarithmic above (monotonic: a bigger size never draws shorter)."""
    if x > cap:
        return cap * (1 + LOG_SLOPE * math.log(x / cap)), Scaling.COMPRESSED
    if x < minimum:
        return minimum, Scaling.ENLARGED
    return x, Scaling.TO_SCALE


def scale(
    sizes: Sequence[int],
    target: float,
    minimum: float,
    *,
    gaps: Sequence[bool] = (),
    cap_fraction: float = 0.1,
) -> tuple[Extent, ...]:
    """Lay sizes end to end on an axis about ``target`` long.

    When every size fits to scale (none shorter than ``minimum``, no gap
    longer than its cap) the whole axis is linear.  Otherwise one
    bytes-per-unit factor ``u`` is chosen by bisection so the total is
    ``target``: sizes between ``minimum`` and ``cap_fraction * target`` units
    are drawn to scale, larger ones log-compressed above the cap (order is
    kept: a bigger size never draws shorter), smaller ones enlarged to
    ``minimum`` so a label fits.  Sizes flagged in ``gaps`` have a much lower
    cap (``GAP_CAP_MINIMA * minimum``): a hole is drawn short, with a break
    mark, and never crowds out what is mapped.  If ``minimum`` per size
    already exceeds ``target``, every size gets ``minimum``.
    """
    if not sizes:
        return ()
    cap = max(cap_fraction * target, minimum)
    gap_cap = min(cap, GAP_CAP_MINIMA * minimum)
    is_gap = [bool(gaps[i]) if i < len(gaps) else False for i in range(len(sizes))]

    linear = sum(sizes) / target
    if all(
        s / linear >= minimum and not (g and s / linear > gap_cap)
        for s, g in zip(sizes, is_gap, strict=True)
    ):
        return _linear(sizes, linear)

    def stretch(i: int, u: float) -> tuple[float, Scaling]:
        return _stretch(sizes[i] / u, gap_cap if is_gap[i] else cap, minimum)

    def total(log_u: float) -> float:
        u = math.exp(log_u)
        return sum(stretch(i, u)[0] for i in range(len(sizes)))

    lo, hi = -60.0, 60.0  # e**60 bytes per unit is far beyond any 52-bit space
    for _ in range(200):
        mid = (lo + hi) / 2
        if total(mid) > target:
            lo = mid
        else:
            hi = mid
    u = math.exp(hi)
    out: list[Extent] = []
    offset = 0.0
    for i in range(len(sizes)):
        length, how = stretch(i, u)
        out.append(Extent(offset, length, how))
        offset += length
    return tuple(out)


def _linear(sizes: Sequence[int], u: float) -> tuple[Extent, ...]:
    out: list[Extent] = []
    offset = 0.0
    for s in sizes:
        out.append(Extent(offset, s / u, Scaling.TO_SCALE))
        offset += s / u
    return tuple(out)
