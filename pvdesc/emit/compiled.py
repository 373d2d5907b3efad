"""Starting iasl on a generated ACPI table, or reusing the AML of the same text compiled before.

:func:`start` is :class:`pvdesc.tools.acpica.Compilation` unless a
:func:`remembering` block is active and a table of the very same text (from the
same template, under the same name) has compiled in it before: then iasl does
not run again and the remembered AML is returned.  iasl compiles in a fresh
temporary directory, under a file name fixed by the table's kind, and puts no
path, date or file name into the AML, so its bytes are a pure function of the
text; a compilation that failed is not remembered (it runs again, and fails
again the same way).  ``pvdesc validate`` remembers for a run, where a fleet's
descriptions often render identical tables (they carry no VM name); ``pvdesc
build`` compiles every time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pvdesc.tools import acpica

#: ``(template, name, text)`` -> AML, in the active :func:`remembering` block, else ``None``.
_remembered: dict[tuple[str, str, str], bytes] | None = None


@contextlib.contextmanager
def remembering(store: dict[tuple[str, str, str], bytes]) -> Iterator[None]:
    """Within the block, remember each successful compilation in ``store`` and reuse it."""
    global _remembered
    before, _remembered = _remembered, store
    try:
        yield
    finally:
        _remembered = before


class Compiled:
    """A table whose AML was remembered: :class:`~pvdesc.tools.acpica.Compilation`'s interface.

    Attributes:
        bytes_: the remembered AML.
    """

    __slots__ = ("bytes_",)

    def __init__(self, aml: bytes) -> None:
        self.bytes_ = aml

    def aml(self) -> bytes:
        """The remembered AML."""
        return self.bytes_

    def __enter__(self) -> Compiled:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None


class Remembering(acpica.Compilation):
    """A :class:`~pvdesc.tools.acpica.Compilation` whose AML is remembered once iasl succeeds.

    Attributes:
        store: where it is remembered.
    """

    def __init__(
        self, source: str, *, template: str, name: str, store: dict[tuple[str, str, str], bytes]
    ) -> None:
        super().__init__(source, template=template, name=name)
        self.store = store

    def aml(self) -> bytes:
        """Wait for iasl; remember its AML."""
        data = super().aml()
        self.store[(self.template, self.name, self.source)] = data
        return data


def start(source: str, *, template: str, name: str) -> acpica.Compilation | Compiled:
    """Start iasl on ``source`` (see the module doc), or give the AML it compiled to before."""
    store = _remembered
    if store is None:
        return acpica.Compilation(source, template=template, name=name)
    known = store.get((template, name, source))
    if known is not None:
        return Compiled(known)
    return Remembering(source, template=template, name=name, store=store)
