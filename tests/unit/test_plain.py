"""pvdesc.commands.plain: plain check and build lines give argparse's namespace, or go to it."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvdesc.commands import parser, plain

DTB = ["check", "--dtb", "q.dtb"]
READ_HERE = [
    [*DTB, "--region", "0x090a0000:64K", "--vcpus", "512"],
    ["check", "--vcpus", "8", "--region", "0x1000:4K", "--dtb", "-"],
    [*DTB, "--hypervisor-config", "x.hypervisor.json"],
    [*DTB, "--hypervisor-config", "-", "--boot", "uefi-acpi", "--format", "json"],
    [*DTB, "--region", "", "--vcpus", "+7", "--ipa-bits", " 36 ", "--boot", "uefi-dt"],
    [*DTB, "--region", "1:1", "--vcpus", "\u0663", "--format", "text"],
    ["check", "--dtb", "a b", "--region", "x", "--vcpus", "1_000"],
]
LEFT_TO_ARGPARSE = [
    [*DTB, "--region", "0x1000:4K", "--vcpus", "-1"],  # argparse reads -1 as a value
    [*DTB, "--reg", "0x1000:4K", "--vcpus", "1"],  # an abbreviation
    [*DTB, "--region=0x1000:4K", "--vcpus", "1"],
    [*DTB, "--region", "0x1000:4K", "--vcpus", "1", "--vcpus", "2"],  # the last one wins
    [*DTB, "--region", "0x1000:4K", "--acpi", "a.aml", "b.aml"],
    [*DTB, "--region", "0x1000:4K", "--vcpus", "0x10"],  # not an int: a usage error
    [*DTB, "--region", "0x1000:4K", "--boot", "bios"],  # not a choice: a usage error
    [*DTB, "--region", "r", "--hypervisor-config", "c"],  # exclusive: a usage error
    ["check", "--region", "0x1000:4K", "--vcpus", "1"],  # --dtb is required
    [*DTB, "--vcpus", "1"],  # one of --region, --hypervisor-config is required
    [*DTB, "--region", "0x1000:4K", "--help"],
    [*DTB, "--region", "0x1000:4K", "--", "x"],
    ["build", "x.yaml", "-o", "out"],
    [],
]
BUILD_READ_HERE = [
    ["build", "x.yaml", "-o", "out"],
    ["build", "-o", "out", "x.yaml", "-q"],
    ["build", "--quiet", "--force", "--output", "o", "x.yaml"],
    ["build", "-", "-o", "-", "--only", "dtb"],
    ["build", "x.yaml", "-o", "out", "--into", "-", "--force"],
    ["build", "", "-o", " "],
]
BUILD_LEFT_TO_ARGPARSE = [
    ["build", "x.yaml"],  # -o is required: a usage error
    ["build", "-o", "out"],  # the description is required
    ["build", "x.yaml", "y.yaml", "-o", "out"],  # one description: a usage error
    ["build", "x.yaml", "-o", "out", "-o", "other"],  # the last one wins
    ["build", "x.yaml", "-o", "out", "-q", "--quiet"],
    ["build", "x.yaml", "--output=out"],
    ["build", "x.yaml", "--out", "out"],  # an abbreviation
    ["build", "x.yaml", "-qo", "out"],  # short flags together
    ["build", "x.yaml", "-o"],  # -o without its value
    ["build", "x.yaml", "-o", "--force"],
    ["build", "-1", "-o", "out"],  # argparse reads -1 as the description
    ["build", "x.yaml", "-o", "out", "--help"],
    ["build", "--", "x.yaml", "-o", "out"],
    ["check", "x.yaml", "-o", "out"],
]


def argparse_namespace(words: list[str]) -> argparse.Namespace | None:
    """What the argparse parser makes of ``words``, ``None`` for a usage error."""
    try:
        return parser.make_parser(words[0] if words else None).parse_args(words)
    except SystemExit:
        return None


@pytest.mark.parametrize("words", READ_HERE)
def test_plain_lines_give_argparse_namespace(words: list[str]) -> None:
    got = plain.check_args(words)
    assert got is not None
    assert vars(got) == vars(argparse_namespace(words))


@pytest.mark.parametrize("words", LEFT_TO_ARGPARSE)
def test_anything_else_is_left_to_argparse(words: list[str]) -> None:
    assert plain.check_args(words) is None


OPTIONS = st.sampled_from([*plain.CHECK_OPTIONS, "--dtb", "--region", "--acpi", "--reg", "-h"])
VALUES = st.one_of(
    st.sampled_from(["-", "--", "1", "-1", " 2", "0x10", "x", "", "json", "uefi-dt", "bios"]),
    st.text(max_size=4),
)


LINES = st.tuples(
    st.tuples(st.just("--dtb"), VALUES),
    st.tuples(st.sampled_from(["--region", "--hypervisor-config"]), VALUES),
    st.lists(st.tuples(OPTIONS, VALUES), max_size=3),
).flatmap(lambda t: st.permutations([t[0], t[1], *t[2]]))


@given(LINES, st.lists(VALUES, max_size=1))
def test_whatever_it_reads_argparse_reads_the_same(
    pairs: list[tuple[str, str]], tail: list[str]
) -> None:
    words = ["check", *(w for pair in pairs for w in pair), *tail]
    got = plain.check_args(words)
    if got is not None:
        assert vars(got) == vars(argparse_namespace(words))


def _subparser(command: str) -> argparse.ArgumentParser:
    """The argparse parser of ``pvdesc COMMAND``."""
    top = parser.make_parser(command)
    (sub,) = (a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = sub.choices[command]
    return found


def test_it_knows_every_option_of_check() -> None:
    """An option added to check's argparse parser must be added here too, or this fails."""
    check = _subparser("check")
    options = {o for a in check._actions for o in a.option_strings}
    assert options - {"-h", "--help", "--acpi"} == set(plain.CHECK_OPTIONS)
    defaults = {a.dest: a.default for a in check._actions if a.dest != "help"}
    assert defaults == plain.CHECK_DEFAULTS
    for option, (dest, is_int, choices) in plain.CHECK_OPTIONS.items():
        (action,) = (a for a in check._actions if option in a.option_strings)
        assert (action.dest, action.type is int, tuple(action.choices or ())) == (
            dest,
            is_int,
            choices,
        )


@pytest.mark.parametrize("words", BUILD_READ_HERE)
def test_plain_build_lines_give_argparse_namespace(words: list[str]) -> None:
    got = plain.plain_args(words)
    assert got is not None
    assert vars(got) == vars(argparse_namespace(words))


@pytest.mark.parametrize("words", BUILD_LEFT_TO_ARGPARSE)
def test_other_build_lines_are_left_to_argparse(words: list[str]) -> None:
    assert plain.build_args(words) is None


BUILD_WORDS = st.one_of(
    st.sampled_from([*plain.BUILD_OPTIONS, "--out", "-h", "--", "-qo", "--only=x", "x.yaml"]),
    st.sampled_from(["-", "-1", "", "out", "dtb", "--x"]),
    st.text(max_size=4),
)


@given(st.lists(BUILD_WORDS, max_size=7))
def test_whatever_build_reads_argparse_reads_the_same(words: list[str]) -> None:
    line = ["build", *words]
    got = plain.build_args(line)
    if got is not None:
        assert vars(got) == vars(argparse_namespace(line))


def test_it_knows_every_option_of_build() -> None:
    """An option added to build's argparse parser must be added here too, or this fails."""
    build = _subparser("build")
    options = {o: a for a in build._actions for o in a.option_strings}
    assert set(options) - {"-h", "--help"} == set(plain.BUILD_OPTIONS)
    for option, (dest, takes_value) in plain.BUILD_OPTIONS.items():
        action = options[option]
        assert (action.dest, action.nargs != 0) == (dest, takes_value)
    defaults = {
        a.dest: a.default for a in build._actions if a.dest not in ("help", "description", "output")
    }
    assert defaults == plain.BUILD_DEFAULTS
