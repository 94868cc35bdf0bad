"""`ccsvi-cds check FILE...`: evaluate a CDS Hooks request or FHIR resources from files, print the cards."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click
import orjson

from ccsvi_cds.bundled import bundled_rules_dir
from ccsvi_cds.evaluate import Evaluation, Evaluator
from ccsvi_cds.facts import validate as fhir_validate
from ccsvi_cds.facts.issues import IssueKind
from ccsvi_cds.facts.records import document_items, flatten, is_hook_request
from ccsvi_cds.public_url import base_url_or_warn
from ccsvi_cds.rulepack import PackError, load_pack


def _read_json(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from exc


def evaluate_file(evaluator: Evaluator, path: Path) -> Evaluation:
    """A CDS Hooks request (has `hook` and `context`) or FHIR JSON (a resource, a Bundle or a list of them)."""
    data = _read_json(path)
    if is_hook_request(data):
        result = evaluator.evaluate_request(data)
    elif isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        result = evaluator.evaluate_document(data, "")
    elif not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise click.ClickException(
            f"{path}: neither a CDS Hooks request (hook, context) nor FHIR JSON (a resource with a resourceType, "
            "or a list of them)"
        )
    else:
        result = evaluator.evaluate_document(data, data["resourceType"])
    if evaluator.validate:
        click.echo(validation_note(path, data, result), err=True)
    return result


def validation_note(path: Path, data: Any, result: Evaluation) -> str:
    """What `--validate` checked in one file: how many resources of which types, against which models."""
    located = flatten(document_items(data, "" if isinstance(data, list) else str(data.get("resourceType"))))[0]
    checked = [r for r in located if r.resource.get("resourceType") in fhir_validate._MODULES]
    by_type = Counter(str(r.resource["resourceType"]) for r in checked)
    invalid_paths = {i.path for i in result.issues if i.kind is IssueKind.INVALID_FHIR}
    invalid = sum(1 for r in checked if any(p.startswith(r.path) for p in invalid_paths))
    types = ", ".join(f"{n} {t}" for t, n in sorted(by_type.items())) or "none"
    verdict = "all valid" if not invalid else f"{invalid} invalid, skipped (see issues)"
    return (f"{path}: validated {len(checked)} of {len(located)} resource(s) with fhir.resources "
            f"(R4B models, R5 for R5-shaped resources; the types the rules read: {types}): {verdict}")


def _text(path: Path, result: Evaluation) -> str:
    lines = [f"{path}: {result.orders_evaluated} order(s) evaluated, {len(result.findings)} card(s)"]
    for f in result.findings:
        lines.append(f"  [{f.indicator.upper()}] {f.rule_id} on {f.order_ref}: {f.summary}")
    for issue in result.issues:
        lines.append(f"  skipped: {issue}")
    return "\n".join(lines)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--rules", "rules_dir", type=click.Path(path_type=Path), default=None,
              help="rule pack folder (default: the pack bundled with ccsvi-cds)")
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json", show_default=True)
@click.option("--validate/--no-validate", default=False, help="validate every resource with fhir.resources first")
@click.option("--base-url", default=None,
              help="the CDS service's public URL for card links (default: CCSVI_BASE_URL, else base_url in "
                   "CCSVI_CONFIG_FILE)")
def check(files: tuple[Path, ...], rules_dir: Path | None, fmt: str, validate: bool, base_url: str | None) -> None:
    """Evaluate CDS Hooks requests or FHIR Bundles/resources and print the cards.

    Exits 0 whether or not cards fire; non-zero when an input or the rule pack cannot be read.
    """
    try:
        pack = load_pack(rules_dir or bundled_rules_dir())
    except PackError as exc:
        raise click.ClickException(str(exc)) from exc
    evaluator = Evaluator(pack, validate=validate, base_url=base_url_or_warn(base_url, "check"))
    results: list[tuple[Path, Evaluation]] = []
    failures: list[str] = []
    for path in files:  # one unreadable file must not hide the results of the others
        try:
            results.append((path, evaluate_file(evaluator, path)))
        except click.ClickException as exc:
            failures.append(exc.format_message())
    _print(results, fmt)
    if failures:
        raise click.ClickException("\n".join(failures))


def _print(results: list[tuple[Path, Evaluation]], fmt: str) -> None:
    if not results:
        return
    if fmt == "text":
        click.echo("\n".join(_text(path, result) for path, result in results))
        return
    payload = [
        {"file": str(path), "cards": result.cards, "issues": [{"path": i.path, "message": i.message}
                                                            for i in result.issues]}
        for path, result in results
    ]
    out = payload[0] if len(payload) == 1 else payload
    sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
