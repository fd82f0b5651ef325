"""The release bundle the app role builds on the controller (roles/app/files/build_release.py):
content-addressed ids, one real wheel build per id, the bundle the hosts install from."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deploy_static import ANSIBLE_DIR, REPO

BUILD = ANSIBLE_DIR / "roles" / "app" / "files" / "build_release.py"


def build(source: Path, cache: Path, version: str = "") -> dict:
    result = subprocess.run([sys.executable, BUILD, f"--source={source}", f"--version={version}",
                             f"--cache={cache}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def source(tmp_path) -> Path:
    """A copy of the project files a release is made of, plus noise that must not count."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "app", src / "app", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.lock", "gunicorn.conf.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    (src / "app" / "__pycache__").mkdir()
    (src / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"noise")
    (src / "notes.txt").write_text("not part of a release")
    return src


def test_same_sources_same_release_built_once(source, tmp_path):
    cache = tmp_path / "cache"
    first = build(source, cache)
    assert first["built"] and first["release_id"].startswith("0.1.0-")
    bundle = Path(first["bundle"])
    assert sorted(p.name for p in bundle.iterdir()) == sorted([first["wheel"], "gunicorn.conf.py", "requirements.lock"])
    with zipfile.ZipFile(bundle / first["wheel"]) as wheel:
        assert "app/main.py" in wheel.namelist()
        assert not [n for n in wheel.namelist() if n.endswith(".pyc")]

    (source / "notes.txt").write_text("changed, still not part of a release")
    again = build(source, cache)
    assert again == {**first, "built": False}


def test_any_release_input_gives_a_new_id(source, tmp_path):
    cache = tmp_path / "cache"
    base = build(source, cache)["release_id"]
    assert build(source, cache, version="2.0.0")["release_id"].startswith("2.0.0-")
    with (source / "app" / "main.py").open("a") as f:
        f.write("\n# a change\n")
    assert build(source, cache)["release_id"] != base


def test_a_tree_without_the_release_files_is_refused(tmp_path):
    (tmp_path / "app").mkdir()
    result = subprocess.run([sys.executable, BUILD, f"--source={tmp_path}", f"--cache={tmp_path / 'c'}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "requirements.lock" in result.stderr and "gunicorn.conf.py" in result.stderr
