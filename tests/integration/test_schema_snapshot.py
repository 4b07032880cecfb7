"""db/schema.sql is what the migrations build: regenerate it with `make schema`."""

from __future__ import annotations

import difflib

import pytest

from iotcloud import schema_snapshot


def test_db_schema_sql_matches_the_migrations(database_url: str) -> None:
    committed = schema_snapshot.SNAPSHOT.read_text()
    major = schema_snapshot.pg_dump_major()
    if schema_snapshot.snapshot_major(committed) != major:
        pytest.skip(
            f"db/schema.sql was dumped by another pg_dump major version than this one ({major})"
        )
    fresh = schema_snapshot.dump_schema(database_url)
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            fresh.splitlines(keepends=True),
            "db/schema.sql",
            "migrated",
            n=1,
        )
    )
    assert not diff, f"db/schema.sql no longer matches db/migrations; run `make schema`:\n{diff}"


def test_normalising_drops_what_is_not_the_schema() -> None:
    dump = (
        "--\n-- PostgreSQL database dump\n--\n\\restrict abc\nSET statement_timeout = 0;\n"
        "SELECT pg_catalog.set_config('search_path', '', false);\n\n\n\n"
        "CREATE TABLE public.t (\n    a integer   \n);\n\n\\unrestrict abc\n"
    )
    assert schema_snapshot.normalise(dump, major=15) == (
        schema_snapshot.HEADER.format(major=15) + "\nCREATE TABLE public.t (\n    a integer\n);\n"
    )
