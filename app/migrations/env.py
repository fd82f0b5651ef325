"""Alembic's environment for `python -m app.migrate`: runs the revisions in versions/ against
DATABASE_URL through asyncpg, the driver the app itself uses (no other PostgreSQL driver needed)."""

import asyncio

import asyncpg
from alembic import context
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

# The deploy runs the hook on one host at a time, but a second run may start meanwhile (another
# deploy, an operator's api-exec): it waits for the first, then finds nothing left to do. Any
# constant works; this one spells "notesmig".
MIGRATION_LOCK = 0x6E6F7465736D6967


def run_migrations(connection) -> None:
    context.configure(connection=connection)
    with context.begin_transaction():
        # Held until the transaction ends, and taken before Alembic reads the current revision.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def migrate(database_url: str) -> None:
    # The URL goes to asyncpg as the app's pool gets it, not through SQLAlchemy's URL parser.
    engine = create_async_engine("postgresql+asyncpg://", poolclass=NullPool,
                                 async_creator=lambda: asyncpg.connect(database_url))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


asyncio.run(migrate(context.config.attributes["database_url"]))
