"""`ccsvi-cds rules lint|test|docs|diff|schema`: the rule author's loop on the command line.

Exit codes: 0 clean; 1 the pack or its cases have errors / failures / changes asked to fail on; 2 the
command could not run (missing folder, unreadable input).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from ccsvi_cds.bundled import bundled_rules_dir

pack_dir = click.argument("directory", required=False, default=bundled_rules_dir,
                          type=click.Path(file_okay=False, path_type=Path))
"""DIRECTORY: the rule pack folder; default: the pack bundled with ccsvi-cds (in a checkout: rules/)."""


@click.group()
def rules() -> None:
    """Write, check and publish rules: lint, test, docs, diff, schema."""


@rules.command()
@pack_dir
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--no-cases", is_flag=True, help="skip the check that evaluates the test cases (never fired)")
def lint(directory: Path, fmt: str, no_cases: bool) -> None:
    """Validate every file of the pack: each problem as file:line:column, what is wrong, how to fix it."""
    from ccsvi_cds.authoring.lint import format_problems, lint_pack

    result = lint_pack(directory, run_case_inputs=not no_cases)
    if fmt == "json":
        payload = {"ok": result.ok, "problems": [
            {"file": p.file, "line": p.line, "column": p.column, "severity": p.severity, "message": p.message,
             "hint": p.hint} for p in result.problems]}
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        click.echo(format_problems(result))
    sys.exit(0 if result.ok else 1)


@rules.command()
@pack_dir
@click.option("-v", "--verbose", is_flag=True, help="list passing cases too")
@click.option("-k", "name_filter", help="run only cases whose name contains this text")
def test(directory: Path, verbose: bool, name_filter: str | None) -> None:
    """Run the cases in DIR/cases through the service's evaluation path; diff expected vs actual cards.

    Fails on a failing case, a rule no case fires, or a rule without a case in which it stays silent.
    """
    from ccsvi_cds.authoring.cases import format_report, load_cases, run_cases
    from ccsvi_cds.authoring.lint import lint_pack

    # lint first: a pack that loads can still fail at evaluation (e.g. cite() of an unknown id); the author
    # sees the root cause at its file:line instead of a traceback or a cascade of failing cases
    linted = lint_pack(directory, run_case_inputs=False)
    if linted.pack is None or linted.errors:
        click.echo(f"rule pack has {len(linted.errors)} problem(s):", err=True)
        click.echo("\n".join(str(p) for p in linted.errors), err=True)
        sys.exit(1)
    pack = linted.pack
    cases, problems = load_cases(directory, pack)
    for p in problems:
        click.echo(str(p), err=True)
    if any(p.severity == "error" for p in problems):
        sys.exit(1)
    if name_filter:
        cases = [c for c in cases if name_filter in c.case.name]
    report = run_cases(pack, cases)
    click.echo(format_report(report, verbose))
    if name_filter:  # a filtered run says nothing about coverage
        sys.exit(1 if report.failures else 0)
    sys.exit(0 if report.ok else 1)


@rules.command()
@pack_dir
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="output file; .html or .md")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), help="default: from the file suffix")
def docs(directory: Path, out: Path, fmt: str | None) -> None:
    """Write a readable catalogue of the pack: rules in plain language, value sets, evidence, cases."""
    from ccsvi_cds.authoring.docs import write_catalogue
    from ccsvi_cds.rulepack import PackError, load_pack

    try:
        pack = load_pack(directory)
    except PackError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    fmt = fmt or ("md" if out.suffix.lower() in (".md", ".markdown") else "html")
    from ccsvi_cds.evaluate import DEFAULT_BASE_URL
    from ccsvi_cds.public_url import configured_base_url

    write_catalogue(pack, out, fmt, configured_base_url(None) or DEFAULT_BASE_URL)
    click.echo(f"wrote {out} ({fmt}, {len(pack.rules)} rules)")


@rules.command()
@click.option("--old", "old_dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--new", "new_dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--fail-on-change", is_flag=True, help="exit 1 if any decision changes")
def diff(old_dir: Path, new_dir: Path, inputs: tuple[str, ...], fmt: str, fail_on_change: bool) -> None:
    """Replay INPUTs (CDS Hooks requests, FHIR Bundles/NDJSON/Bulk exports) through both packs; show what changes."""
    from ccsvi_cds.authoring.diff import DiffInputError, diff_packs
    from ccsvi_cds.rulepack import PackError, load_pack

    try:
        old, new = load_pack(old_dir), load_pack(new_dir)
    except PackError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    try:
        report = diff_packs(old, new, inputs)
    except DiffInputError as exc:
        click.echo(f"ccsvi-cds rules diff: {exc}", err=True)
        sys.exit(2)
    if fmt == "json":
        sys.stdout.write(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        click.echo(report.text())
    sys.exit(1 if fail_on_change and report.changes else 0)


@rules.command()
@pack_dir
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="folder for the *.schema.json files (default: schema/ beside DIRECTORY, where the files' "
                   "$schema lines point)")
@click.option("--check", is_flag=True, help="only check that the committed schemas are up to date")
def schema(directory: Path, out_dir: Path | None, check: bool) -> None:
    """Generate the JSON Schemas editors use to validate rule, pack, evidence and case files while typing."""
    from ccsvi_cds.authoring.schema import schema_dir, stale_schemas, write_schemas

    target = out_dir or schema_dir(directory)
    if check:
        stale = stale_schemas(target)
        if stale:
            click.echo(f"out of date in {target}: {', '.join(stale)} (run `ccsvi-cds rules schema`)", err=True)
            sys.exit(1)
        click.echo(f"{target}: up to date")
        return
    for path in write_schemas(target):
        click.echo(f"wrote {path}")
