"""`ccsvi-cds audit INPUT... --out DIR`: find every CCSVI referral in FHIR exports, as the live service would."""

from __future__ import annotations

import signal
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import click

from .evaluator import PackChanged
from .sources import InputError


def _default_rules() -> Path:
    from ccsvi_cds.service.settings import default_rules_dir

    return default_rules_dir()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _progress_bar() -> tuple[Callable[[], None] | None, Callable[[str, int, int, int], None] | None]:
    """On a terminal (stderr), rich progress: bytes and resources read, rate and time remaining, then the
    tasks read again for the patients to join, then the shards evaluated. Nothing when output is redirected (CI, cron): the one summary line says it all."""
    if not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    read = Progress(TextColumn("{task.description:<9}"), BarColumn(), TaskProgressColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TextColumn("{task.fields[resources]:>12,} resources"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)
    evaluate = Progress(TextColumn("{task.description:<9}"), BarColumn(), TaskProgressColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[unit]}"), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=console)
    units = {"gather": "tasks read again", "evaluate": "shards"}
    tasks: dict[str, TaskID] = {}
    resources: Counter[str] = Counter()
    live: list[Progress] = []

    def tick(phase: str, advance: int, total: int, read_now: int) -> None:
        prog = read if phase == "read" else evaluate
        if phase not in tasks:
            if live:
                live.pop().stop()
            prog.start()
            live.append(prog)
            tasks[phase] = prog.add_task(phase, total=total, resources=0, unit=units.get(phase, ""))
        resources[phase] += read_now
        prog.update(tasks[phase], advance=advance, resources=resources[phase])

    def stop() -> None:
        while live:
            live.pop().stop()

    return stop, tick


@click.command("audit")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for findings.ndjson, findings.csv, detectedissues.ndjson, errors.ndjson, report.html, "
                   "summary.json.")
@click.option("--rules", "rules_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Rule pack directory (default: the bundled rules).")
@click.option("--engine", type=click.Choice(["embedded", "spark"]), default="embedded", show_default=True,
              help="embedded: a process pool on this machine; spark: Apache Spark (pip install 'ccsvi-cds[spark]').")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes for the embedded engine (default: CPUs).")
@click.option("--spark-master", default=None, help="Spark master URL (default: spark.master from the Spark configuration, else local[*]).")
@click.option("--spark-conf", multiple=True, metavar="KEY=VALUE", help="Extra Spark configuration (repeatable).")
@click.option("--base-url", default=None,
              help="The CDS service's public base URL, so card links match what the EHR was shown.")
@click.option("--validate", is_flag=True,
              help="Fully validate each resource of a patient with an order (fhir.resources) before evaluating; "
                   "invalid ones are reported in errors.ndjson and skipped. Slow: about 3,000 resources/s per core.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the audit spills the resources the rules read (clinical data), in a private (0700) "
                   "directory removed at the end, and by the next audit if this one is killed. Default: the "
                   "system's temporary directory ($TMPDIR, else /tmp). Needs up to about the input's size free.")
@click.option("--allow-incomplete", is_flag=True,
              help="Exit 0 even when an input file could not be read to its end (truncated, unreadable, fewer "
                   "resources than its Bulk Data manifest lists). By default the audit then exits with 3; "
                   "either way the outputs are written and summary.json lists the files under 'incomplete'.")
def audit(inputs: tuple[str, ...], out_dir: Path, rules_dir: Path | None, engine: str, workers: int | None,
          spark_master: str | None, spark_conf: tuple[str, ...], base_url: str | None,
          validate: bool, workdir: Path | None, allow_incomplete: bool) -> None:
    """Audit FHIR Bundles, NDJSON files and Bulk Data export directories (gzip accepted) for CCSVI referrals.

    Every ServiceRequest is evaluated whatever its status (except entered-in-error), with the same rules and
    evaluation path as the live CDS Hooks service: each finding carries the card the EHR would have shown.
    """
    from ccsvi_cds.rulepack import PackError

    from .run import AuditOptions, run_audit

    conf = []
    for item in spark_conf:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--spark-conf")
        k, v = item.split("=", 1)
        conf.append((k, v))
    if engine == "spark":
        try:
            import pyspark  # noqa: F401
        except ImportError:
            raise click.ClickException("--engine spark needs PySpark: pip install 'ccsvi-cds[spark]'") from None
    from ccsvi_cds.public_url import base_url_or_warn

    base_url = base_url_or_warn(base_url, "audit")  # option, CCSVI_BASE_URL, or the config file's base_url
    opts = AuditOptions(inputs, out_dir, rules_dir or _default_rules(), engine,  # type: ignore[arg-type]
                        workers, spark_master, tuple(conf), workdir, base_url, validate)
    # SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C: temporary files are removed and the
    # outputs of a previous audit in DIR stay as they were.
    signal.signal(signal.SIGTERM, _terminate)
    stop, tick = _progress_bar()

    def notice(text: str) -> None:
        click.echo(f"notice: {text}", err=True)

    try:
        summary = run_audit(opts, tick, notice)
    except InputError as exc:
        raise click.ClickException(f"cannot audit: {exc}") from None
    except PackError as exc:
        raise click.ClickException(f"rule pack {opts.rules_dir}: {exc}") from None
    except PackChanged as exc:
        raise click.ClickException(str(exc)) from None
    except BrokenProcessPool:
        raise click.ClickException("a worker process died (out of memory, or killed); no output was written, "
                                   "the outputs of any earlier audit in the directory are unchanged") from None
    finally:
        if stop is not None:
            stop()
    f = summary["findings"]
    click.echo(
        f"{summary['read']['total']:,} resources read, {summary['serviceRequestsEvaluated']:,} ServiceRequests "
        f"evaluated, {f['total']:,} findings ({', '.join(f'{k} {v:,}' for k, v in f['byRule'].items()) or 'none'}), "
        f"{summary['errors']['total']:,} records skipped (errors.ndjson), in {summary['durationSeconds']:.1f} s. "
        f"Outputs in {out_dir}/"
    )
    for item in summary["incomplete"]:
        click.echo(f"error: {item['file']}: {item['reason']}", err=True)
    if summary["incomplete"]:
        files = len({item["file"] for item in summary["incomplete"]})
        click.echo(f"error: the audit is INCOMPLETE: {files} input file(s) could not be read to their end, so "
                   "records are missing from the findings (summary.json 'incomplete', errors.ndjson)", err=True)
        if not allow_incomplete:
            sys.exit(3)
