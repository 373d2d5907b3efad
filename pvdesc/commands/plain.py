"""``pvdesc check`` and ``pvdesc build``'s plain command lines, read without argparse.

``check`` and ``build`` are meant to start like C tools, and argparse costs each about
2 to 3 ms before any work: its import (with gettext), one help formatter per option, and
a gettext lookup (which imports locale) per help text.  The command lines a script
writes are read here: ``check`` then ``--option value`` pairs; ``build``, one
description and ``-o``/``--output``, ``--only`` and ``--into`` each followed by its value,
``-q``/``--quiet`` and ``--force``, in any order.  Anything else (``--help``,
``--opt=value``, an abbreviation, a repeated option, a value that starts with ``-``, a
value argparse would refuse, a missing or conflicting option) returns ``None``, and the
caller hands the words to the argparse parser of :mod:`pvdesc.commands.parser`, which
gives the answer, or the usage error, it always gave.  The result is the namespace
argparse would build (``tests/unit/test_plain.py`` compares the two).
"""

from __future__ import annotations

from types import SimpleNamespace

from pvdesc.commands import handlers

#: ``check``'s options that take one value (``_add_check`` in :mod:`pvdesc.commands.parser`
#: declares them): the attribute, whether the value is an ``int``, and its choices.
CHECK_OPTIONS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "--dtb": ("dtb", False, ()),
    "--hypervisor-config": ("hypervisor_config", False, ()),
    "--region": ("region", False, ()),
    "--vcpus": ("vcpus", True, ()),
    "--ipa-bits": ("ipa_bits", True, ()),
    "--boot": ("boot", False, ("linux-dt", "uefi-dt", "uefi-acpi")),
    "--format": ("format", False, ("text", "json")),
}
#: The attributes argparse sets when an option is not given.
CHECK_DEFAULTS: dict[str, object] = {
    "dtb": None,
    "hypervisor_config": None,
    "region": None,
    "vcpus": None,
    "ipa_bits": None,
    "boot": "linux-dt",
    "acpi": [],
    "format": "text",
}


def _is_value(word: str) -> bool:
    """Whether argparse takes ``word`` as a value, never as an option (``-`` included)."""
    return not word.startswith("-") or word == "-"


def check_args(words: list[str]) -> SimpleNamespace | None:
    """``pvdesc check``'s arguments from ``words`` (``check`` first), or ``None`` (see above)."""
    if not words or words[0] != "check" or len(words) % 2 == 0:
        return None
    values = dict(CHECK_DEFAULTS, acpi=[])
    given = set()
    for i in range(1, len(words), 2):
        option, text = words[i], words[i + 1]
        spec = CHECK_OPTIONS.get(option)
        if spec is None or option in given or not _is_value(text):
            return None
        given.add(option)
        name, is_int, choices = spec
        if choices and text not in choices:
            return None
        if is_int:
            try:
                values[name] = int(text)  # what argparse's type=int calls
            except ValueError:
                return None
        else:
            values[name] = text
    # --dtb is required, and exactly one of --region and --hypervisor-config.
    if "--dtb" not in given or ("--region" in given) == ("--hypervisor-config" in given):
        return None
    return SimpleNamespace(command="check", func=handlers.cmd_check, **values)


#: ``build``'s options (``_add_build`` in :mod:`pvdesc.commands.parser`): the attribute, and
#: whether the option takes a value (the others are flags, ``store_true``).
BUILD_OPTIONS: dict[str, tuple[str, bool]] = {
    "-o": ("output", True),
    "--output": ("output", True),
    "--only": ("only", True),
    "--into": ("into", True),
    "-q": ("quiet", False),
    "--quiet": ("quiet", False),
    "--force": ("force", False),
}
#: The attributes argparse sets when an option is not given (``description`` and
#: ``output`` are required).
BUILD_DEFAULTS: dict[str, object] = {
    "only": None,
    "quiet": False,
    "into": None,
    "force": False,
}


def build_args(words: list[str]) -> SimpleNamespace | None:
    """``pvdesc build``'s arguments from ``words`` (``build`` first), or ``None`` (see above)."""
    if not words or words[0] != "build":
        return None
    values: dict[str, object] = dict(BUILD_DEFAULTS)
    given: set[str] = set()
    description: str | None = None
    i = 1
    while i < len(words):
        word = words[i]
        spec = BUILD_OPTIONS.get(word)
        if spec is None:
            if description is not None or not _is_value(word):
                return None
            description = word
            i += 1
            continue
        name, takes_value = spec
        if name in given:
            return None
        given.add(name)
        if not takes_value:
            values[name] = True
            i += 1
            continue
        if i + 1 == len(words) or not _is_value(words[i + 1]):
            return None
        values[name] = words[i + 1]
        i += 2
    if description is None or "output" not in given:
        return None
    return SimpleNamespace(
        command="build", func=handlers.cmd_build, description=description, **values
    )


def plain_args(words: list[str]) -> SimpleNamespace | None:
    """:func:`check_args` or :func:`build_args` by the first word; ``None`` for argparse."""
    if words and words[0] == "build":
        return build_args(words)
    return check_args(words)
