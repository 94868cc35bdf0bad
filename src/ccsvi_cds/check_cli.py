"""`ccsvi-cds check FILE...`: evaluate a CDS Hooks request or FHIR resources from files, print the cards."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from ccsvi_cds.evaluate import Evaluation, Evaluator
from ccsvi_cds.facts.records import is_hook_request
from ccsvi_cds.rulepack import PackError, load_pack

DEFAULT_RULES = Path("rules")


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
        return evaluator.evaluate_request(data)
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return evaluator.evaluate_document(data, "")
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise click.ClickException(
            f"{path}: neither a CDS Hooks request (hook, context) nor FHIR JSON (a resource with a resourceType, "
            "or a list of them)"
        )
    return evaluator.evaluate_document(data, data["resourceType"])


def _text(path: Path, result: Evaluation) -> str:
    lines = [f"{path}: {result.orders_evaluated} order(s) evaluated, {len(result.findings)} card(s)"]
    for f in result.findings:
        lines.append(f"  [{f.indicator.upper()}] {f.rule_id} on {f.order_ref}: {f.summary}")
    for issue in result.issues:
        lines.append(f"  skipped: {issue}")
    return "\n".join(lines)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--rules", "rules_dir", type=click.Path(path_type=Path), default=DEFAULT_RULES, show_default=True,
              help="rule pack folder")
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json", show_default=True)
@click.option("--validate/--no-validate", default=False, help="validate every resource with fhir.resources first")
def check(files: tuple[Path, ...], rules_dir: Path, fmt: str, validate: bool) -> None:
    """Evaluate CDS Hooks requests or FHIR Bundles/resources and print the cards.

    Exits 0 whether or not cards fire; non-zero when an input or the rule pack cannot be read.
    """
    try:
        pack = load_pack(rules_dir)
    except PackError as exc:
        raise click.ClickException(str(exc)) from exc
    evaluator = Evaluator(pack, validate=validate)
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
