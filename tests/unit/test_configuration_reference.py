"""docs/configuration.md is the settings objects and the roles' defaults, written out: this test
fails, and prints the table to paste, as soon as a variable, a default or a description differs."""

import json
import re

import pytest
import yaml
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from app.settings import AppSettings
from support import REPO
from vmkit.settings import Settings

REFERENCE = REPO / "docs" / "configuration.md"
ROLES_DIR = REPO / "deploy" / "ansible" / "roles"
# The order a reader meets them: the facts every role shares first, then the hosts' tiers.
ROLES = ("shared", "base", "redis", "postgres", "api", "nginx", "exporters", "monitoring")


def default_of(field) -> str:
    if field.default_factory is not None or field.default is PydanticUndefined:
        return "computed"
    if field.default in ("", [], None):
        return "empty"
    return f"`{field.default}`"


def settings_table(settings_class: type[BaseSettings]) -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in settings_class.model_fields.items():
        assert field.description, f"{settings_class.__name__}.{name} has no description"
        rows.append(f"| `{name.upper()}` | {default_of(field)} | {field.description} |")
    return "\n".join(rows)


def role_default(value: object) -> str:
    if isinstance(value, str) and "{{" in value:
        return "derived"
    if value in ("", [], {}, None):
        return "empty"
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`".replace("|", "\\|")


def role_table(role: str) -> str:
    """Every variable of roles/ROLE/defaults/main.yml with its default and its comment."""
    path = ROLES_DIR / role / "defaults" / "main.yml"
    lines = path.read_text().splitlines()
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, value in yaml.safe_load(path.read_text()).items():
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
        comment = []
        while lines[index - 1 - len(comment)].startswith("# "):
            comment.insert(0, lines[index - 1 - len(comment)][2:])
        meaning = " ".join(comment).replace("|", "\\|")
        rows.append(f"| `{name}` | {role_default(value)} | {meaning} |")
    return "\n".join(rows)


def table_under(heading: str) -> str | None:
    text = REFERENCE.read_text()
    assert heading in text, f"docs/configuration.md lacks the heading {heading!r}"
    found = re.search(r"(\| variable \|.*?)(?:\n\n|\Z)", text[text.index(heading):], re.DOTALL)
    return found.group(1).strip() if found else None


@pytest.mark.parametrize(("heading", "settings_class"), [
    ("### The kit's settings (vmkit.settings)", Settings),
    ("### The example app's settings (app/settings.py)", AppSettings),
])
def test_every_setting_is_listed_as_the_code_defines_it(heading, settings_class):
    expected = settings_table(settings_class)
    assert table_under(heading) == expected, (
        f"docs/configuration.md's table under {heading!r} differs from {settings_class.__name__}; "
        f"paste this:\n\n{expected}\n")


@pytest.mark.parametrize("role", ROLES)
def test_every_role_variable_is_listed_as_its_defaults_define_it(role):
    heading = f"### roles/{role}"
    expected = role_table(role)
    assert table_under(heading) == expected, (
        f"docs/configuration.md's table under {heading!r} differs from its defaults; paste this:\n\n{expected}\n")


def test_the_reference_covers_every_role():
    assert {path.name for path in ROLES_DIR.iterdir() if path.is_dir()} == set(ROLES)
