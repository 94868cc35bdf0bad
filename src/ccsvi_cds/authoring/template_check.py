"""Static checks of card templates: every `alias.field` exists, every alias is bound, every cite() id is known.

A template error would otherwise surface only when a matching order arrives (an UndefinedError in the
service, or a silently empty sentence), so it is caught here from the Jinja2 AST, with the file position of
the offending expression inside the YAML block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from jinja2 import TemplateSyntaxError, nodes

from ccsvi_cds.facts.schema import MATCHABLE, fields_of
from ccsvi_cds.rulepack.loader import RulePack, value_domain
from ccsvi_cds.rulepack.model import Rule
from ccsvi_cds.rulepack.source import Problem, SourceDoc
from ccsvi_cds.rulepack.templates import template_env

ALWAYS_BOUND = {"order": "order", "patient": "patient"}  # set by Evaluator._findings for every card
FACT_COMMON = ("kind",)


@dataclass(frozen=True)
class Use:
    name: str
    field: str | None
    line: int  # template-relative, 1-based
    token: str  # text to find on that line for the column


def _uses(ast: nodes.Template) -> Iterator[Use]:
    seen: set[int] = set()
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
            seen.add(id(node.node))
            yield Use(node.node.name, node.attr, node.lineno, f"{node.node.name}.{node.attr}")
        elif (isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name)
              and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)):
            seen.add(id(node.node))
            yield Use(node.node.name, node.arg.value, node.lineno, node.node.name)
    for name in ast.find_all(nodes.Name):
        if name.ctx == "load" and id(name) not in seen:
            yield Use(name.name, None, name.lineno, name.name)


def _locals(ast: nodes.Template) -> set[str]:
    """Names a template defines itself ({% set %}, {% for %}) or guards with `is defined`."""
    names = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    for test in ast.find_all(nodes.Test):
        if test.name in ("defined", "undefined") and isinstance(test.node, nodes.Name):
            names.add(test.node.name)
    return names


def _position(doc: SourceDoc, loc: tuple[object, ...], tline: int, token: str, lines: list[str]) -> tuple[int, int]:
    """File (line, column) of template line `tline`: block scalars (| or >) start on the line after the key."""
    key_line, key_col = doc.locate(loc)
    raw = lines[key_line - 1] if 0 < key_line <= len(lines) else ""
    after = raw.split(":", 1)[1].strip() if ":" in raw else ""
    line = key_line + tline if after[:1] in ("|", ">") else key_line + tline - 1
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    col = text.find(token)
    if col < 0:
        return line, len(text) - len(text.lstrip()) + 1 if text else key_col
    return line, col + 1


def _alias_kinds(rule: Rule) -> tuple[dict[str, set[str]], dict[str, list[int]]]:
    """alias -> fact kinds it is bound to; alias -> the `when` alternatives that do not bind it."""
    kinds: dict[str, set[str]] = {}
    for alternative in rule.when:
        for alias, pattern in alternative.items():
            kinds.setdefault(alias, set()).add(pattern.fact)
    unbound = {alias: [i for i, alt in enumerate(rule.when) if alias not in alt] for alias in kinds}
    return kinds, unbound


def check_templates(pack: RulePack, rule: Rule, doc: SourceDoc) -> list[Problem]:
    """Problems in the rule's detail template."""
    env = template_env(pack.evidence)
    lines = doc.path.read_text(encoding="utf-8").splitlines()
    kinds, unbound = _alias_kinds(rule)
    problems: list[Problem] = []
    # suggestion conditions are declarative ({alias: {field: values}}) and checked by the loader
    sources: list[tuple[tuple[object, ...], str]] = [(("card", "detail"), rule.card.detail)]
    for loc, source in sources:
        try:
            ast = env.parse(source)
        except TemplateSyntaxError:
            continue  # the loader reports syntax errors
        local = _locals(ast)

        def at(use: Use, message: str, hint: str, severity: str = "error",
               loc: tuple[object, ...] = loc) -> Problem:
            line, col = _position(doc, loc, use.line, use.token, lines)
            return Problem(doc.display, line, col, message, hint, severity)

        reported: set[str] = set()  # an unknown or unbound name once per template, at its first use
        for use in sorted(_uses(ast), key=lambda u: u.line):
            if use.name in local or use.name in env.globals or use.name in reported:
                continue
            names = sorted(set(kinds) | set(ALWAYS_BOUND))
            if use.name in ALWAYS_BOUND:
                fact_kinds = {ALWAYS_BOUND[use.name]}
            elif use.name in kinds:
                fact_kinds = kinds[use.name]
                if unbound[use.name]:
                    alts = ", ".join(f"when[{i}]" for i in unbound[use.name])
                    problems.append(at(use, f"'{use.name}' is not bound in {alts}: the card fails to render when "
                                            "that alternative matches",
                                       f"bind '{use.name}' in every alternative or guard it with "
                                       f"{{% if {use.name} is defined %}}"))
                    reported.add(use.name)
                    continue
            else:
                problems.append(at(use, f"unknown name '{use.name}' in the template",
                                   f"use one of: {', '.join(names)} (or cite(...))"))
                reported.add(use.name)
                continue
            if use.field is None:
                continue
            for kind in sorted(fact_kinds):
                allowed = fields_of(kind) + FACT_COMMON
                if use.field not in allowed:
                    problems.append(at(use, f"{kind} facts have no field '{use.field}' ({use.name}.{use.field})",
                                       f"use one of: {', '.join(allowed)}"))
        problems.extend(_check_cites(pack, rule, ast, at))
        problems.extend(_check_comparisons(pack, ast, {**{a: {k} for a, k in ALWAYS_BOUND.items()}, **kinds}, at))
    return problems


def _check_comparisons(pack: RulePack, ast: nodes.Template, kinds: dict[str, set[str]], at: Locate) -> list[Problem]:
    """`{% if patient.ms_subtype == 'progressive' %}` must name a value the field can take: renaming it in
    pack.yaml would otherwise silently drop that part of the card."""
    problems = []
    for compare in ast.find_all(nodes.Compare):
        left = compare.expr
        if not (isinstance(left, nodes.Getattr) and isinstance(left.node, nodes.Name)) or left.node.name not in kinds:
            continue
        for operand in compare.ops:
            if operand.op not in ("eq", "ne") or not isinstance(operand.expr, nodes.Const):
                continue
            value = operand.expr.value
            for kind in sorted(kinds[left.node.name]):
                if left.attr not in MATCHABLE.get(kind, {}):
                    continue
                domain = value_domain(kind, left.attr, pack.manifest)
                if domain is not None and value not in domain:
                    use = Use(left.node.name, left.attr, compare.lineno, f"{left.node.name}.{left.attr}")
                    problems.append(at(use, f"'{value}' is not a value of {kind}.{left.attr}: this comparison is "
                                            "never true", f"use one of: {', '.join(domain)}"))
    return problems


Locate = Callable[..., Problem]  # (use, message, hint, severity='error') -> Problem


def _check_cites(pack: RulePack, rule: Rule, ast: nodes.Template, at: Locate) -> list[Problem]:
    problems: list[Problem] = []
    for call in ast.find_all(nodes.Call):
        if not (isinstance(call.node, nodes.Name) and call.node.name == "cite"):
            continue
        arg = call.args[0] if call.args else None
        if not (isinstance(arg, nodes.Const) and isinstance(arg.value, str)):
            problems.append(at(Use("cite", None, call.lineno, "cite("),
                               "cite() needs one evidence id as a quoted string",
                               "write cite('evidence-id')"))
            continue
        use = Use("cite", None, call.lineno, arg.value)
        if arg.value not in pack.evidence:
            problems.append(at(use, f"unknown evidence id '{arg.value}' in cite()",
                               "add it to evidence.yaml or fix the id"))
        elif arg.value not in rule.card.evidence:
            problems.append(at(use, f"'{arg.value}' is cited in the text but not listed in card.evidence",
                               "add it to card.evidence so the card's evidence extension lists it",
                               "warning"))
    return problems
