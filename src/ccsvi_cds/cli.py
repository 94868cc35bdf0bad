"""The `ccsvi-cds` command: a thin click group whose subcommands live beside the code they drive.

Subcommands are imported lazily so that `ccsvi-cds check` does not pay for FastAPI or PySpark.
"""

from __future__ import annotations

import importlib

import click

SUBCOMMANDS: dict[str, str] = {
    "check": "ccsvi_cds.check_cli:check",
    "serve": "ccsvi_cds.service.cli:serve",
    "audit": "ccsvi_cds.audit.cli:audit",
    "rules": "ccsvi_cds.authoring.cli:rules",
    "feedback": "ccsvi_cds.service.feedback_report:feedback",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup)
@click.version_option(package_name="ccsvi-cds")
def main() -> None:
    """Decision support against venous angioplasty/stenting for CCSVI in multiple sclerosis."""
