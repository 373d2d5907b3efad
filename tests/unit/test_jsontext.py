"""pvdesc.emit.jsontext writes what ``json.dumps(value, indent=2)`` writes, for any such value."""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdesc.emit import jsontext

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=40,
)


@given(VALUES)
@settings(max_examples=500)
def test_same_text_as_json_dumps(value: Any) -> None:
    assert jsontext.dumps(value) == json.dumps(value, indent=2)


class Kind(enum.StrEnum):
    RAM = "ram"


class Slot(enum.IntEnum):
    FIRST = 7


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        {"a": {}, "b": [], "c": [[]], "d": [{}]},
        {"kind": Kind.RAM, "slot": Slot.FIRST, "huge": 2**64 + 1, "neg": -0.0},
        [math.nan, math.inf, -math.inf, 1e300, 'é\u2028"\\\n\x00'],
    ],
)
def test_edges(value: Any) -> None:
    assert jsontext.dumps(value) == json.dumps(value, indent=2)


@pytest.mark.parametrize("value", [{1: "x"}, {None: 1}, {"a": {1, 2}}, [b"bytes"], object()])
def test_refuses_what_pvdesc_never_writes(value: Any) -> None:
    with pytest.raises(TypeError):
        jsontext.dumps(value)
