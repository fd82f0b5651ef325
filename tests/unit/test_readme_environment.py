"""The README's environment tables are the settings objects, written out: this test fails, and
prints the table to paste, as soon as a variable, a default or a description differs."""

import re

import pytest
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from app.settings import AppSettings
from support import REPO
from vmkit.settings import Settings

README = REPO / "README.md"


def default_of(field) -> str:
    if field.default_factory is not None or field.default is PydanticUndefined:
        return "computed"
    if field.default in ("", [], None):
        return "empty"
    return f"`{field.default}`"


def table(settings_class: type[BaseSettings]) -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in settings_class.model_fields.items():
        assert field.description, f"{settings_class.__name__}.{name} has no description"
        rows.append(f"| `{name.upper()}` | {default_of(field)} | {field.description} |")
    return "\n".join(rows)


@pytest.mark.parametrize(("heading", "settings_class"), [
    ("### The kit's settings (vmkit.settings)", Settings),
    ("### The example app's settings (app/settings.py)", AppSettings),
])
def test_readme_lists_every_setting_as_the_code_defines_it(heading, settings_class):
    text = README.read_text()
    assert heading in text, f"README.md lacks the heading {heading!r}"
    found = re.search(r"(\| variable \|.*?)(?:\n\n|\Z)", text[text.index(heading):], re.DOTALL)
    expected = table(settings_class)
    assert found and found.group(1).strip() == expected, (
        f"README.md's table under {heading!r} differs from {settings_class.__name__}; "
        f"paste this:\n\n{expected}\n")
