"""The ``runwarden`` command: thin click shells over worker/lifecycle and the service."""

from __future__ import annotations

import sys
from typing import Any

import click
from sqlalchemy.exc import DBAPIError

from worker.errors import RunwardenError
from worker.settings import get_settings


class RunwardenGroup(click.Group):
    """Turns runwarden's errors into one line on stderr and an exit code (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RunwardenError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"runwarden: error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except DBAPIError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            from worker.db import unavailable

            click.echo(f"runwarden: error: {unavailable(exc).message}", err=True)
            sys.exit(1)


@click.group(cls=RunwardenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """runwarden keeps operation runs truthful: every run ends in a terminal state
    with an evidenced reason."""


@main.command()
def migrate() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    from worker.db import describe_url
    from worker.migrate import upgrade

    url = get_settings().resolved_database_url
    upgrade(url)
    click.echo(f"database {describe_url(url)} is at the latest schema")


if __name__ == "__main__":  # pragma: no cover
    main()
