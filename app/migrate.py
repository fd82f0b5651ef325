"""`python -m app.migrate`: the release hook that brings the database schema to the newest
revision (`alembic upgrade head`) before the release is switched to. A failing hook keeps the
running release (docs/migrations.md).

The Alembic configuration is built here rather than read from an alembic.ini: the revisions ship
inside the app's wheel (app/migrations), and the database is DATABASE_URL, as the app reads it.
"""

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from vmkit.logs import configure_logging
from vmkit.settings import get_settings

log = logging.getLogger("app.migrate")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def config(database_url: str) -> Config:
    alembic = Config()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    # Not a main option: those go through configparser, which would read a "%" of the password.
    alembic.attributes["database_url"] = database_url
    return alembic


def main() -> None:
    settings = get_settings()
    # Alembic logs each revision it runs: JSON lines in the journal, like the services'.
    configure_logging(settings.log_level)
    if not settings.database_url:
        log.info("DATABASE_URL is not set: no database, nothing to migrate")
        return
    command.upgrade(config(settings.database_url), "head")
    log.info("the database schema is at the newest revision")


if __name__ == "__main__":
    main()
