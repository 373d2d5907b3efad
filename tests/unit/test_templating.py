"""The generated template modules are current and render exactly what Jinja2 renders.

pvdesc renders every template with its module in pvdesc.emit.templates_compiled, which
scripts/generate-compiled translates from the template (pvdesc.emit.templategen); Jinja2
is not imported at run time.  These tests fail when a module is not what the generator
writes for the current template, when the translation renders anything Jinja2 would
render differently (on the context of every call pvdesc makes for the shipped examples,
and on those contexts with user text and addresses drawn by hypothesis), and when the
translator accepts a construct it does not handle.
"""

from __future__ import annotations

import enum
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from helpers import EXAMPLES, ROOT, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvdesc.commands.map import command as map_command
from pvdesc.commands.map import draw
from pvdesc.commands.prove import guest, judging, kvm_guest_plan, kvm_host, kvm_job, kvm_judge
from pvdesc.commands.prove import kvm as kvmprove
from pvdesc.commands.prove import kvm_guest as kvmguest
from pvdesc.commands.prove import report as prove_report
from pvdesc.core.ranges import Range
from pvdesc.description.load import load
from pvdesc.emit import build, templategen, templating
from pvdesc.layout import allocate as layout
from pvdesc.read import guest_output

COMPILED = ROOT / "pvdesc" / "emit" / "templates_compiled"
Call = tuple[str, dict[str, Any]]


def test_every_template_has_its_current_module() -> None:
    """Else run scripts/generate-compiled (after any change to a template)."""
    names = templategen.templates()
    assert len(names) >= 10
    want = {f"{templating.module_name(t)}.py" for t in names} | {"__init__.py"}
    assert {p.name for p in COMPILED.glob("*.py")} == want
    for template in names:
        module = COMPILED / f"{templating.module_name(template)}.py"
        assert module.read_text(encoding="utf-8") == templategen.compiled_source(template), template


def test_the_key_covers_the_text_and_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    key = templategen.template_key("x")
    assert templategen.template_key("y") != key
    monkeypatch.setitem(templating.OPTIONS, "trim_blocks", False)
    assert templategen.template_key("x") != key


def test_module_names_are_distinct() -> None:
    names = [templating.module_name(t) for t in templategen.templates()]
    assert len(set(names)) == len(names)
    assert all(n.isidentifier() for n in names)
    assert Path(COMPILED / "__init__.py").is_file()


def test_pvdesc_renders_without_jinja2(tmp_path: Path) -> None:
    """Jinja2 is a test dependency only: build and map run with it made unimportable."""
    code = (
        "import sys\nsys.modules['jinja2'] = None\n"
        "from pvdesc.commands import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
    )
    example = str(EXAMPLES / "numa-4node-acpi.yaml")
    svg, html = tmp_path / "m.svg", tmp_path / "m.html"
    for args in (
        ["build", example, "-o", str(tmp_path / "out"), "-q"],
        ["map", example, "--svg", str(svg), "--html", str(html)],
    ):
        proc = run([sys.executable, "-c", code, *args], cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "numa-4node-acpi.ssdt.dsl").is_file()
    assert svg.read_text().startswith("<?xml") and "<svg" in html.read_text()


def _kvm_job(name: str, vmm: Path) -> kvm_job.Job:
    loaded = load(EXAMPLES / f"{name}.yaml")
    job = kvm_job.make_job(loaded, layout.allocate(loaded.description), (1,))
    return job._replace(vmm=vmm)


def _kvm_reports(job: kvm_job.Job) -> list[kvm_judge.KvmReport]:
    host = kvm_host.HostInfo("6.1.0", "kvm [1]: VHE mode initialized successfully", (), 1.0)
    lines = ["kvm api 12 steal_time 1 ipa_size 48 max_vcpus 512"]
    for vid, ipa in enumerate(job.layout.vcpu_ipas):
        lines.append(
            f"vcpu {vid} ipa {ipa:#x} smccc_version 0x10001 arch_features 0 pv_features 0 "
            f"pv_time_st {ipa + 64 * (vid % 2):#x} revision 0 attributes 0 stolen_time 0"
        )
    rep = kvm_judge.judge(job, host, kvm_host.JobOutput((*lines, f"done {vid + 1}"), (), 0))
    plan = kvm_guest_plan.Plan(
        2, 0x40000000, 0x42000000, Range(0x42200000, 0x1000), b"dtb", b"", Path()
    )
    console = ["guest: [    0.060000] arm-pv: using stolen time PV", "guest: [ 2.3] panic"]
    crashed = kvmguest.judge(job.layout, plan, ["guest system-event reset"], console, True)
    hung = kvmguest.judge(job.layout, plan, ["error: KVM_RUN vCPU 1: Bad address"], [], True)
    return [rep, rep._replace(guest=crashed), rep._replace(guest=hung)]


def _drive(tmp: Path) -> None:
    """Every path of pvdesc that renders a template, on the shipped examples."""
    for path in sorted(EXAMPLES.glob("*.yaml")):
        result = build.plan(path)
        build.summary(result, "out")
        amap = map_command.from_description(path)
        draw.render_html(amap)  # renders the SVG too
    lay = layout.allocate(load(EXAMPLES / "linux-carve-reserved.yaml").description)
    iomem = "40000000-bffeffff : System RAM\nbfff0000-bfffffff : reserved\n"
    for text in (iomem, "40000000-bfffffff : System RAM\n"):
        serial = f"{guest_output.IOMEM_BEGIN}\n{text}{guest_output.IOMEM_END}\n"
        boot = guest.BootResult(
            serial, 0, guest_output.parse_iomem(guest_output.iomem_text(serial))
        )
        prove_report.to_text(judging.judge(lay, boot))
    guest.init_script()
    vmm = tmp / "vmm"
    vmm.write_bytes(b"\x7fELF")
    jobs = [_kvm_job("kvmtool", vmm), _kvm_job("max-vcpus-512", vmm)]
    kvm_host.host_initramfs(b"busybox", jobs)
    for job in jobs:
        for rep in _kvm_reports(job):
            kvmprove.to_text(rep)
    kvm_guest_plan.initramfs(b"busybox")
    kvm_guest_plan.base_dtb(2, Range(0x48000000, 0x10000))  # compiled by dtc


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> list[Call]:
    """The (template, context) of every render call :func:`_drive` makes."""
    seen: list[Call] = []
    real = templating.render

    def record(name: str, **context: Any) -> str:
        seen.append((name, context))
        return real(name, **context)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(templating, "render", record)
        _drive(tmp_path_factory.mktemp("drive"))
    return seen


def jinja(name: str, context: dict[str, Any]) -> str:
    return templategen.environment().get_template(name).render(**context)


def test_every_template_is_driven(calls: list[Call]) -> None:
    assert {name for name, _ in calls} == set(templategen.templates())


def test_modules_render_what_jinja2_renders(calls: list[Call]) -> None:
    for name, context in calls:
        assert templating.render(name, **context) == jinja(name, context), name


class _Changed:
    """An object seen through :func:`_change`: its attributes and items changed alike."""

    def __init__(self, obj: Any, change: Callable[[Any], Any]) -> None:
        self._obj, self._change = obj, change

    def __getattr__(self, name: str) -> Any:
        return self._change(getattr(self._obj, name))

    def __getitem__(self, key: Any) -> Any:
        return self._change(self._obj[key])

    def __iter__(self) -> Iterator[Any]:
        return map(self._change, self._obj)

    def __len__(self) -> int:
        return len(self._obj)

    def __bool__(self) -> bool:
        return bool(self._obj)

    def __str__(self) -> str:
        return self._change(str(self._obj))  # type: ignore[no-any-return]


def _change(value: Any, text: str, mask: int, shift: float) -> Any:
    """``value`` with user text inserted into every string, and addresses and floats moved."""
    again = functools.partial(_change, text=text, mask=mask, shift=shift)
    if value is None or isinstance(value, bool | enum.Enum) or callable(value):
        return value
    if isinstance(value, str):
        return value[:1] + text + value[1:]
    if isinstance(value, int):
        return value ^ mask if value >= 1 << 16 else value
    if isinstance(value, float):
        return value + shift
    if isinstance(value, tuple | list):
        return type(value)(map(again, value)) if type(value) in (tuple, list) else value
    if isinstance(value, dict):
        return {k: again(v) for k, v in value.items()}
    return _Changed(value, again)


USER_TEXT = st.text(st.sampled_from("<&>'\"%x ·\n") | st.characters(codec="utf-8"), max_size=8)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=USER_TEXT, mask=st.integers(0, (1 << 64) - 1), shift=st.floats(-1e6, 1e6))
def test_modules_render_what_jinja2_renders_on_any_text(
    calls: list[Call], text: str, mask: int, shift: float
) -> None:
    done: set[str] = set()
    for name, context in calls:
        if name in done:
            continue
        done.add(name)
        changed = {k: _change(v, text, mask, shift) for k, v in context.items()}
        assert templating.render(name, **changed) == jinja(name, changed), name


def _both(name: str, source: str, context: dict[str, Any]) -> tuple[str, str]:
    """``source`` (as ``templates/<name>``) rendered by Jinja2 and by its translation."""
    env = templategen.environment()
    expected = env.overlay(loader=jinja2.DictLoader({name: source})).get_template(name)
    namespace: dict[str, Any] = {}
    exec(compile(templategen.compiled_source(name, source), name, "exec"), namespace)
    return expected.render(**_fresh(context)), namespace["render"](_fresh(context))


def _fresh(context: dict[str, Any]) -> dict[str, Any]:
    """``context`` with each :class:`_Once` list made a new one-pass iterator."""
    return {k: iter(v) if isinstance(v, _Once) else v for k, v in context.items()}


class _Point:
    """An object with attributes and items, as the templates' records are.

    Attributes:
        x: an attribute that is also an item.
    """

    x = 1

    def __getitem__(self, key: str) -> str:
        return {"x": "item x", "y": "item y"}[key]


class _Once(list[int]):
    """A list each test turns into a one-pass iterator (``loop.length`` and ``last`` still work)."""


#: Made-up templates for the rules the shipped ones rely on (scoping, loops, look-ups).
CASES: list[tuple[str, dict[str, Any]]] = [
    (
        "{% for x in xs %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}"
        "{{ loop.length }}{{ x }},{% endfor %}",
        {"xs": _Once([1, 2, 3])},
    ),
    (
        "{% for a in xs %}{% set outer = loop.index %}{% for b in xs %}{{ outer }}{{ loop.index }}"
        "{% if not loop.last %}.{% endif %}{% endfor %};{% endfor %}",
        {"xs": "ab"},
    ),
    ("{% set x = 1 %}{% for x in xs %}{{ x }}{% endfor %}{{ x }}", {"xs": [5, 6]}),
    ("{% for a in xs %}{% set x = a %}{{ x }}{% endfor %}{{ x }}", {"xs": [5, 6], "x": 9}),
    ("{{ x }}{% set x = 2 %}{{ x }}", {"x": 1}),
    ("{% if f %}{% set x = 2 %}{% endif %}{{ x }}", {"f": True}),
    ("{% if f %}{% set x = 2 %}{% endif %}{{ x }}", {"f": False, "x": 1}),
    ("{% for k, v in d %}{{ k }}={{ v }}\n{% endfor %}", {"d": [("a", 1), ("b", None)]}),
    (
        "{% if n < 0 %}neg{% elif n == 0 %}zero{% elif n in (1, 2) %}small{% else %}big{% endif %}",
        {"n": 2},
    ),
    ("{{ -n // 3 }} {{ n % 4 }} {{ n ** 2 }} {{ n / 8 }} {{ 'a' ~ n ~ none }}", {"n": 7}),
    (
        "{{ p.x }} {{ p['x'] }} {{ p.y }} {{ d.items }} {{ d['items'] }}",
        {"p": _Point(), "d": {"items": 3}},
    ),
    ("{{ 'yes' if v is none else 'no' }}{{ v is not none }}{{ v and 1 or 2 }}", {"v": None}),
    (
        "{% macro m(a, b) %}<{{ a }}|{{ b }}>{% endmacro %}{{ m(1, 'x') }}{{ m(s, s) }}",
        {"s": "<&>"},
    ),
    (
        "{{ '%5.1f|%-4s|%#0*x' | format(f, s, 8, n) }} {{ f | round | int }} {{ s | upper }}",
        {"f": 2.55, "s": "ab", "n": 255},
    ),
    ("{{ xs | join(', ') }} {{ xs | length }} {{ '3.9' | int }} {{ 'x' | int }}", {"xs": [1, "b"]}),
    ("{{ n | hex }} {{ n | hex(8) }} {{ n | rust_hex(16) }} {{ n | human }}", {"n": 0x40000}),
    ("{% for i in range(1, 4) %}{{ i }}{% endfor %}{{ vmm_model }}", {"vmm_model": "ctx"}),
]


#: Each case in a text template, and (unless it joins or uses ``~``) in an escaped one.
ESCAPED_CASES = [c for c in CASES if "join" not in c[0] and "~" not in c[0]]


@pytest.mark.parametrize(
    ("name", "source", "context"),
    [("t.txt.j2", *c) for c in CASES] + [("t.svg.j2", *c) for c in ESCAPED_CASES],
)
def test_rules_match_jinja2(name: str, source: str, context: dict[str, Any]) -> None:
    expected, got = _both(name, source, context)
    assert got == expected


@pytest.mark.parametrize(
    ("source", "context"),
    [
        ("{{ nope }}", {}),
        ("{{ p.nope }}", {"p": _Point()}),
        ("{{ xs[5] }}", {"xs": [1]}),
        ("{% if f %}{% set x = 2 %}{% endif %}{{ x }}", {"f": False}),
        ("{% if f %}{% set x = 2 %}{% endif %}{% if x %}set{% endif %}", {"f": False}),
    ],
)
def test_what_is_undefined_is_an_error_in_both(source: str, context: dict[str, Any]) -> None:
    with pytest.raises(jinja2.UndefinedError):
        _both("t.txt.j2", source, context)  # Jinja2 renders first
    module: dict[str, Any] = {}
    exec(compile(templategen.compiled_source("t.txt.j2", source), "t", "exec"), module)
    with pytest.raises(templating.UndefinedError):
        module["render"](context)


@pytest.mark.parametrize(
    ("name", "construct"),
    [
        ("t.txt.j2", "{% include 'x.j2' %}"),
        ("t.txt.j2", "{{ s | title }}"),
        ("t.txt.j2", "{{ s | format(a=1) }}"),
        ("t.txt.j2", "{% for x in xs %}{{ loop.revindex }}{% endfor %}"),
        ("t.txt.j2", "{% for x in xs %}{% else %}empty{% endfor %}"),
        ("t.txt.j2", "{% for x in xs if x %}{% endfor %}"),
        ("t.txt.j2", "{{ x is defined }}"),
        ("t.txt.j2", "{{ xs[1:] }}"),
        ("t.txt.j2", "{{ 'a' if x }}"),
        ("t.txt.j2", "{{ {'a': 1} }}"),
        ("t.txt.j2", "{{ f(a=1) }}"),
        ("t.txt.j2", "{{ loop }}"),
        ("t.txt.j2", "{{ dict() }}"),
        ("t.txt.j2", "{% set x = 1 %}{% macro m() %}{{ x }}{% endmacro %}"),
        ("t.txt.j2", "{% macro m(a=1) %}{% endmacro %}"),
        ("t.txt.j2", "{% filter upper %}x{% endfilter %}"),
        ("t.svg.j2", "{{ xs | join(', ') }}"),
        ("t.svg.j2", "{{ 'a' ~ s }}"),
    ],
)
def test_constructs_not_translated_are_refused(name: str, construct: str) -> None:
    with pytest.raises(templategen.Untranslatable, match=rf"^templates/{name}:2: "):
        templategen.compiled_source(name, "line one\n" + construct)
