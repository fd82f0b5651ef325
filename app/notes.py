"""Notes in PostgreSQL, through the kit's pool (vmkit.database): a write that is not idempotent,
a count, and a read by primary key. The table comes from the migrations (app/migrations); the
routes use asyncpg directly.

Without DATABASE_URL, or while the database is down, every route here answers 503 and the rest of
the app serves on.
"""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from vmkit import database

from app.api import BAD_JSON, NOT_FOUND, VALUE_PATTERN, JSONBytes

router = APIRouter()

DATABASE_DOWN = {503: {"description": "database unavailable or not configured; nothing was written"}}
TEXT_MAX_LENGTH = 1000
TAG_PATTERN = r"^[a-z0-9_-]{1,64}$"
# The table's id is a bigint.
NOTE_ID_MAX = 2**63 - 1

Tag = Annotated[str, Field(pattern=TAG_PATTERN, description="Lower-case letters, digits, _ and -")]


class NewNote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(min_length=1, max_length=TEXT_MAX_LENGTH, pattern=VALUE_PATTERN)]
    tag: Tag


@router.post("/notes", status_code=201, responses={**DATABASE_DOWN, **BAD_JSON})
async def note_create(body: NewNote) -> Response:
    """Inserts one row per 201: a retry after a lost answer inserts another, unless the client
    sends an Idempotency-Key (the kit then runs it once per key, where there is Redis)."""
    async with database.connection() as conn:
        note_id = await conn.fetchval(
            "INSERT INTO notes (text, tag) VALUES ($1, $2) RETURNING id", body.text, body.tag
        )
    return JSONBytes({"id": note_id, "text": body.text, "tag": body.tag}, status_code=201)


@router.get("/notes/count", responses=DATABASE_DOWN)
async def note_count(tag: Annotated[str | None, Query(pattern=TAG_PATTERN)] = None) -> Response:
    """The number of notes, of one tag when `tag` is given."""
    async with database.connection() as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM notes WHERE $1::text IS NULL OR tag = $1", tag
        )
    return JSONBytes({"tag": tag, "count": count})


@router.get("/notes/{note_id}", responses={**NOT_FOUND, **DATABASE_DOWN})
async def note_get(note_id: Annotated[int, Path(ge=1, le=NOTE_ID_MAX)]) -> Response:
    async with database.connection() as conn:
        row = await conn.fetchrow("SELECT id, text, tag, created_at FROM notes WHERE id = $1", note_id)
    if row is None:
        return JSONBytes({"detail": "no such note"}, status_code=404)
    return JSONBytes(dict(row))  # orjson writes created_at as RFC 3339
