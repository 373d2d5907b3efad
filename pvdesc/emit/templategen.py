"""Translate each template into the Python module that renders it (run when the package is built).

``scripts/generate-compiled`` writes :func:`compiled_source` for every template into
:mod:`pvdesc.emit.templates_compiled`; pvdesc renders with those modules
(:mod:`pvdesc.emit.templating`) and never imports Jinja2.  This module does: it parses
each template with Jinja2 (the options of :data:`templating.OPTIONS`, values escaped
in SVG and HTML ones) and turns the tree into Python: text becomes string constants;
output, ``for`` (``loop.index0``/``index``/``first``/``last``/``length``), ``if``,
``set`` and ``macro`` become statements; filters, tests, comparisons and arithmetic
become expressions with Jinja2's meaning.  It handles only what the templates use
and raises :class:`Untranslatable`, naming ``template:line``, on anything else, so a
new construct cannot render differently from Jinja2 without notice.  Nothing at run
time imports it; Jinja2 is a test dependency.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

import jinja2
import markupsafe
from jinja2 import nodes

from pvdesc.emit import templating

_BINARY = (nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod, nodes.Pow)
_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "lteq": "<=", "gt": ">", "gteq": ">=",
            "in": "in", "notin": "not in"}  # fmt: skip
#: Filters whose Jinja2 version reads the eval context (escaping): text templates only.
_TEXT_ONLY_FILTERS = ("join",)
_LOOP_ATTRIBUTES = ("index0", "index", "first", "last", "length")


class Untranslatable(Exception):
    """A template uses a construct the translator does not render exactly as Jinja2."""


@cache
def environment() -> jinja2.Environment:
    """Jinja2 as the templates are written for it: what the translation must match."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pvdesc.templates", "."),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(
            templating.ESCAPED, default_for_string=False, default=False
        ),
        keep_trailing_newline=templating.OPTIONS["keep_trailing_newline"],
        trim_blocks=templating.OPTIONS["trim_blocks"],
        lstrip_blocks=templating.OPTIONS["lstrip_blocks"],
    )
    # pvdesc's own filters are the very functions the generated modules call.
    env.filters.update({n: templating.FILTERS[n] for n in ("hex", "rust_hex", "human")})
    env.globals.update(templating.GLOBALS)
    return env


def templates() -> list[str]:
    """Every template in ``templates/``, sorted."""
    folder = resources.files("pvdesc.templates")
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".j2"))


def source_of(template: str) -> str:
    """The text of ``templates/<template>``."""
    return (resources.files("pvdesc.templates") / template).read_text(encoding="utf-8")


def escaped(template: str) -> bool:
    """Whether ``template``'s values are HTML-escaped (what Jinja2's autoescape decides)."""
    return template.endswith(templating.ESCAPED)


def template_key(source: str) -> str:
    """What a generated module was made from: the template's text and the options."""
    signature = f"{sorted(templating.OPTIONS.items())}\0escaped {templating.ESCAPED}\0"
    return hashlib.sha256((signature + source).encode("utf-8")).hexdigest()


class _Loop:
    """One ``for``'s ``loop`` variable: which attributes its body reads.

    Attributes:
        index: the Python name of the loop's index (from 0).
        length: the Python name of the number of items (set only when ``last``/``length`` are read).
        used: the attributes of ``loop`` the body reads.
    """

    __slots__ = ("index", "length", "used")

    def __init__(self, index: str, length: str) -> None:
        self.index = index
        self.length = length
        self.used: set[str] = set()


class _Translator:
    """Python source for one template (``lines``), written by walking its tree.

    Attributes:
        template: the template's name, for errors.
        escape: whether every value is HTML-escaped (SVG and HTML templates).
        lines: the body of ``render(c)`` so far.
        frames: for each enclosing scope, the template's names set there -> their Python names.
        loops: the enclosing ``for`` loops, innermost last.
        barrier: frames below it belong to the template around a macro (a macro must not read them).
        helpers: the names of :mod:`.templating` (and MarkupSafe) the code calls.
        count: how many Python names were made (each is unique).
    """

    __slots__ = ("barrier", "count", "escape", "frames", "helpers", "lines", "loops", "template")

    def __init__(self, template: str, escape: bool) -> None:
        self.template = template
        self.escape = escape
        self.lines: list[str] = []
        self.frames: list[dict[str, str]] = []
        self.loops: list[_Loop] = []
        self.barrier = 0
        self.helpers: set[str] = set()
        self.count = 0

    def refuse(self, node: nodes.Node, what: str) -> Untranslatable:
        return Untranslatable(f"templates/{self.template}:{node.lineno}: {what} is not translated")

    def fresh(self, name: str) -> str:
        self.count += 1
        return f"v{self.count}_{name}"

    def helper(self, name: str) -> str:
        self.helpers.add(name)
        return name

    # Expressions --------------------------------------------------------------------

    def bound(self, node: nodes.Node, name: str) -> str | None:
        """The local holding ``name`` if the template set it in an enclosing frame."""
        for depth in range(len(self.frames) - 1, -1, -1):
            if name in self.frames[depth]:
                if depth < self.barrier:
                    raise self.refuse(node, f"a macro reading {name!r}, set outside it")
                return self.frames[depth][name]
        return None

    def resolve(self, node: nodes.Node, name: str) -> str:
        """A name read by the template: a local the template set, or the context's."""
        local = self.bound(node, name)
        if local is not None:
            return local
        env = environment()
        if name in env.globals and name not in templating.GLOBALS:
            raise self.refuse(node, f"Jinja2's global {name!r}")
        return f"{self.helper('lookup')}(c, {name!r})"

    def expr(self, node: nodes.Node) -> str:
        e = self.expr
        if isinstance(node, nodes.Const) and isinstance(node.value, str | int | float | None):
            return repr(node.value)
        if isinstance(node, nodes.Name) and node.ctx == "load":
            if node.name == "loop":
                raise self.refuse(node, "'loop' other than loop.<attribute>")
            return self.resolve(node, node.name)
        if isinstance(node, nodes.Getattr):
            if isinstance(node.node, nodes.Name) and node.node.name == "loop":
                return self.loop_attribute(node)
            return f"{self.helper('attr')}({e(node.node)}, {node.attr!r})"
        if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Slice):
            return f"{self.helper('item')}({e(node.node)}, {e(node.arg)})"
        if isinstance(node, nodes.Tuple | nodes.List):
            items = "".join(f"{e(i)}, " for i in node.items)
            return f"({items})" if isinstance(node, nodes.Tuple) else f"[{items}]"
        if isinstance(node, nodes.CondExpr) and node.expr2 is not None:
            return f"({e(node.expr1)} if {e(node.test)} else {e(node.expr2)})"
        if isinstance(node, nodes.Compare):
            ops = "".join(f" {_COMPARE[o.op]} {e(o.expr)}" for o in node.ops)
            return f"({e(node.expr)}{ops})"
        if isinstance(node, nodes.Not | nodes.Neg | nodes.Pos):
            return f"({node.operator} {e(node.node)})"
        if isinstance(node, (nodes.And, nodes.Or, *_BINARY)):
            return f"({e(node.left)} {node.operator} {e(node.right)})"
        if isinstance(node, nodes.Concat) and not self.escape:
            return f"''.join(map(str, ({''.join(e(n) + ', ' for n in node.nodes)})))"
        if isinstance(node, nodes.Filter) and node.node is not None:
            return self.filter(node)
        if isinstance(node, nodes.Test) and node.name == "none" and not self.has_arguments(node):
            return f"({e(node.node)} is None)"
        if isinstance(node, nodes.Call) and not self.has_keywords(node):
            return f"{e(node.node)}({', '.join(e(a) for a in node.args)})"
        raise self.refuse(node, f"the expression {type(node).__name__}")

    @staticmethod
    def has_keywords(node: nodes.Call | nodes.Filter | nodes.Test) -> bool:
        return bool(node.kwargs or node.dyn_args or node.dyn_kwargs)

    def has_arguments(self, node: nodes.Test) -> bool:
        return bool(node.args) or self.has_keywords(node)

    def filter(self, node: nodes.Filter) -> str:
        name = node.name
        if name not in templating.FILTERS or self.has_keywords(node):
            raise self.refuse(node, f"the filter {name!r} (or its keyword arguments)")
        if self.escape and name in _TEXT_ONLY_FILTERS:
            raise self.refuse(node, f"the filter {name!r} in an escaped template")
        args = "".join(f", {self.expr(a)}" for a in node.args)
        assert node.node is not None
        return f"{self.helper('FILTERS')}[{name!r}]({self.expr(node.node)}{args})"

    def loop_attribute(self, node: nodes.Getattr) -> str:
        if not self.loops or node.attr not in _LOOP_ATTRIBUTES:
            raise self.refuse(node, f"loop.{node.attr} (or loop outside a for)")
        loop = self.loops[-1]
        loop.used.add(node.attr)
        i, n = loop.index, loop.length
        return {"index0": i, "index": f"({i} + 1)", "first": f"({i} == 0)",
                "last": f"({i} == {n} - 1)", "length": n}[node.attr]  # fmt: skip

    # Statements ---------------------------------------------------------------------

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def assigned(self, body: list[nodes.Node]) -> list[str]:
        """Names ``set`` or defined as macros in this frame (``if`` shares its frame)."""
        out: list[str] = []
        for node in body:
            if isinstance(node, nodes.Assign):
                target = node.target
                names = [target] if isinstance(target, nodes.Name) else target.find_all(nodes.Name)
                out += [n.name for n in names]
            elif isinstance(node, nodes.Macro):
                out.append(node.name)
            elif isinstance(node, nodes.If):
                out += self.assigned(node.body + node.elif_ + node.else_)
        return list(dict.fromkeys(out))

    def frame(
        self, depth: int, node: nodes.Node, body: list[nodes.Node], bound: dict[str, str]
    ) -> None:
        """``body`` as a new frame: its own ``set`` names start as the enclosing frames' value."""
        for name in self.assigned(body):
            if name in bound:
                continue
            outer = self.bound(node, name)
            if outer is None:
                outer = f"{self.helper('lookup_or_missing')}(c, {name!r})"
            bound[name] = var = self.fresh(name)
            self.emit(depth, f"{var} = {outer}")
        self.frames.append(bound)
        self.block(depth, body)
        self.frames.pop()

    def block(self, depth: int, body: list[nodes.Node]) -> None:
        start = len(self.lines)
        for node in body:
            self.statement(depth, node)
        if len(self.lines) == start:
            self.emit(depth, "pass")

    def statement(self, depth: int, node: nodes.Node) -> None:
        if isinstance(node, nodes.Output):
            self.output(depth, node)
        elif isinstance(node, nodes.If):
            self.emit(depth, f"if {self.expr(node.test)}:")
            self.block(depth + 1, node.body)
            for branch in node.elif_:
                self.emit(depth, f"elif {self.expr(branch.test)}:")
                self.block(depth + 1, branch.body)
            if node.else_:
                self.emit(depth, "else:")
                self.block(depth + 1, node.else_)
        elif isinstance(node, nodes.For):
            self.for_loop(depth, node)
        elif isinstance(node, nodes.Assign):
            self.emit(depth, f"{self.target(node.target)} = {self.expr(node.node)}")
        elif isinstance(node, nodes.Macro):
            self.macro(depth, node)
        else:
            raise self.refuse(node, f"the statement {type(node).__name__}")

    def target(self, node: nodes.Node, bound: dict[str, str] | None = None) -> str:
        """A ``set`` target (``bound`` None: the frame's name) or a ``for`` one (a fresh name)."""
        if isinstance(node, nodes.Name) and node.ctx == "store":
            if bound is None:
                return self.frames[-1][node.name]
            bound[node.name] = var = self.fresh(node.name)
            return var
        if isinstance(node, nodes.Tuple) and node.ctx == "store":
            return "(" + "".join(self.target(i, bound) + ", " for i in node.items) + ")"
        raise self.refuse(node, f"the target {type(node).__name__}")

    def output(self, depth: int, node: nodes.Output) -> None:
        parts: list[str] = []
        text = ""
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                text += child.data
            elif isinstance(child, nodes.Const) and isinstance(child.value, str | int | float):
                value = child.value  # Jinja2 turns constants into text when it compiles
                text += str(markupsafe.escape(value)) if self.escape else str(value)
            else:
                if text:
                    parts.append(repr(text))
                    text = ""
                convert = self.helper("escape") if self.escape else "str"
                parts.append(f"{convert}({self.expr(child)})")
        if text:
            parts.append(repr(text))
        if len(parts) == 1:
            self.emit(depth, f"w({parts[0]})")
        elif parts:
            self.emit(depth, f"o.extend(({', '.join(parts)}))")

    def for_loop(self, depth: int, node: nodes.For) -> None:
        if node.else_ or node.test is not None or node.recursive:
            raise self.refuse(node, "for with else, a filter or recursive")
        iterable = self.expr(node.iter)
        loop = _Loop(self.fresh("index"), self.fresh("length"))
        bound: dict[str, str] = {}
        target = self.target(node.target, bound)
        start = len(self.lines)
        self.loops.append(loop)
        self.frame(depth + 1, node, node.body, bound)
        self.loops.pop()
        if loop.used & {"last", "length"}:
            items = self.fresh("items")
            head = [f"{items} = list({iterable})", f"{loop.length} = len({items})",
                    f"for {loop.index}, {target} in enumerate({items}):"]  # fmt: skip
        elif loop.used:
            head = [f"for {loop.index}, {target} in enumerate({iterable}):"]
        else:
            head = [f"for {target} in {iterable}:"]
        self.lines[start:start] = ["    " * depth + line for line in head]

    def macro(self, depth: int, node: nodes.Macro) -> None:
        if node.defaults or any(
            n.name in ("varargs", "kwargs", "caller") for n in node.find_all(nodes.Name)
        ):
            raise self.refuse(node, "a macro with defaults, varargs, kwargs or caller")
        bound: dict[str, str] = {}
        params = [self.target(nodes.Name(a.name, "store"), bound) for a in node.args]
        self.emit(depth, f"def {self.frames[-1][node.name]}({', '.join(params)}):")
        self.emit(depth + 1, "o = []")
        self.emit(depth + 1, "w = o.append")
        saved = (self.barrier, self.loops)
        self.barrier, self.loops = len(self.frames), []
        self.frame(depth + 1, node, node.body, bound)
        self.barrier, self.loops = saved
        result = f"{self.helper('Markup')}(''.join(o))" if self.escape else "''.join(o)"
        self.emit(depth + 1, f"return {result}")


def translate(template: str, source: str) -> tuple[str, set[str]]:
    """The body of ``render(c)`` for ``template`` (text ``source``) and the helpers it calls."""
    env = environment()
    tree = env.parse(source, template, f"templates/{template}")
    tr = _Translator(template, escaped(template))
    tr.emit(1, "o = []")
    tr.emit(1, "w = o.append")
    tr.frame(1, tree, tree.body, {})
    tr.emit(1, "return ''.join(o)")
    return "\n".join(tr.lines), tr.helpers


def compiled_source(template: str, source: str | None = None) -> str:
    """The module :mod:`.templates_compiled` ships for ``template`` (the generator's text).

    ``source``: the template's text if not the file's (tests translate made-up templates).
    """
    source = source_of(template) if source is None else source
    body, helpers = translate(template, source)
    markup = sorted(helpers & {"Markup", "escape"})
    ours = sorted(helpers - {"Markup", "escape"})
    imports = [f"from markupsafe import {', '.join(markup)}\n"] if markup else []
    if ours:
        imports.append(f"from pvdesc.emit.templating import {', '.join(ours)}\n")
    return (
        f'"""GENERATED by {templating.GENERATOR} from templates/{template}: do not edit.\n\n'
        "The template as Python, written by pvdesc.emit.templategen (see pvdesc.emit.templating).\n"
        '"""\n'
        "# mypy: ignore-errors\n\n" + "".join(imports) + f'\nKEY = "{template_key(source)}"\n\n\n'
        "def render(c):\n"
        f"{body}\n"
    )
