"""``pvdesc check``'s plain command lines, read without argparse.

``check`` is meant to start like a C tool, and argparse costs it about 3 ms before any
work: its import (with gettext), one help formatter per option, and a gettext lookup
(which imports locale) per help text.  The command lines a script writes, ``check``
then ``--option value`` pairs, are read here; anything else (``--help``, ``--opt=value``,
an abbreviation, a repeated option, a value that starts with ``-``, a value argparse
would refuse, a missing or conflicting option) returns ``None``, and the caller hands
the words to the argparse parser of :mod:`pvdesc.commands.parser`, which gives the
answer, or the usage error, it always gave.  The result is the namespace argparse
would build (``tests/unit/test_plain.py`` compares the two).
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


def check_args(words: list[str]) -> SimpleNamespace | None:
    """``pvdesc check``'s arguments from ``words`` (``check`` first), or ``None`` (see above)."""
    if not words or words[0] != "check" or len(words) % 2 == 0:
        return None
    values = dict(CHECK_DEFAULTS, acpi=[])
    given = set()
    for i in range(1, len(words), 2):
        option, text = words[i], words[i + 1]
        spec = CHECK_OPTIONS.get(option)
        # argparse takes "-" (standard input) as a value, and any word that does not
        # start with "-"; other words are options to it.
        if spec is None or option in given or (text.startswith("-") and text != "-"):
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
