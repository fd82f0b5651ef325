"""The release bundle the api role builds on the controller (roles/api/files/build_release.py): the
project's wheel (any layout, any package name) and the kit runtime's wheel, ids that hash what the
hosts install, one bundle per id, and clear errors for a project that is not deployable."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from deploy_static import ANSIBLE_DIR, REPO

BUILD = ANSIBLE_DIR / "roles" / "api" / "files" / "build_release.py"


def run_build(project: Path, cache: Path, *, kit: Path | None = None, version: str = "",
              env: dict | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, BUILD, f"--project={project}", f"--version={version}", f"--cache={cache}"]
    if kit:
        args.append(f"--kit={kit}")
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)


def build(project: Path, cache: Path, **kwargs) -> dict:
    result = run_build(project, cache, **kwargs)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def members(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    """A small stand-in for the kit: runtime/ (distribution vmkit, another build backend) and
    gunicorn.conf.py."""
    root = tmp_path_factory.mktemp("kit")
    (root / "runtime" / "vmkit").mkdir(parents=True)
    (root / "runtime" / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["flit_core>=3.9,<4"]\nbuild-backend = "flit_core.buildapi"\n'
        '[project]\nname = "vmkit"\nversion = "0.9.0"\ndescription = "stand-in runtime"\n')
    (root / "runtime" / "vmkit" / "__init__.py").write_text('"""stand-in runtime"""\n')
    (root / "gunicorn.conf.py").write_text("# stand-in\n")
    return root


def make_project(root: Path) -> Path:
    """A src/-layout project whose package is not called like the example's, plus noise that must not
    count: caches, build output of an earlier in-place build, files outside the package."""
    (root / "src" / "shop").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "shop-service"\nversion = "1.4.0"\ndependencies = ["fastapi"]\n')
    (root / "src" / "shop" / "__init__.py").write_text("")
    (root / "src" / "shop" / "web.py").write_text("api = object()\n")
    (root / "requirements.lock").write_text("fastapi==0.115.0 --hash=sha256:00\n")
    (root / "src" / "shop" / "__pycache__").mkdir()
    (root / "src" / "shop" / "__pycache__" / "web.cpython-311.pyc").write_bytes(b"noise")
    (root / "build" / "lib" / "shop").mkdir(parents=True)
    (root / "build" / "lib" / "shop" / "stale.py").write_text("# from an old in-place build\n")
    (root / "notes.txt").write_text("not part of a release")
    return root


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "shop")


@pytest.fixture(scope="module")
def first(tmp_path_factory, kit) -> tuple[Path, Path, dict]:
    """(project, cache, result) of the first build of a fresh project."""
    root = tmp_path_factory.mktemp("first")
    project, cache = make_project(root / "shop"), root / "cache"
    return project, cache, build(project, cache, kit=kit)


def test_a_src_layout_project_builds_once_per_id(first, kit):
    project, cache, release = first
    assert release["built"] and release["version"] == "1.4.0" and release["release_id"].startswith("1.4.0-")
    bundle = Path(release["bundle"])
    assert bundle.parent == cache
    assert release["project_wheel"].startswith("shop_service-1.4.0-")
    assert release["runtime_wheel"].startswith("vmkit-0.9.0-")
    files = sorted([release["project_wheel"], release["runtime_wheel"], "gunicorn.conf.py", "requirements.lock"])
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*files, release["archive"]])
    # The one archive a host is sent holds the four files, root's and readable by all.
    with tarfile.open(bundle / release["archive"]) as tar:
        assert sorted(tar.getnames()) == files
        assert {(m.uid, m.mode) for m in tar.getmembers()} == {(0, 0o644)}
        assert tar.extractfile("requirements.lock").read() == (project / "requirements.lock").read_bytes()
    assert len(release["lock_sha256"]) == 64
    # Whatever the project's build backend packages is what the hosts install.
    shop = members(bundle / release["project_wheel"])
    assert "shop/web.py" in shop and not [n for n in shop if n.endswith(".pyc") or "stale" in n]
    assert "vmkit/__init__.py" in members(bundle / release["runtime_wheel"])
    assert (bundle / "requirements.lock").read_bytes() == (project / "requirements.lock").read_bytes()
    assert (bundle / "gunicorn.conf.py").read_bytes() == (kit / "gunicorn.conf.py").read_bytes()
    # The working trees get no build output.
    assert not list(project.rglob("*.egg-info")) and not (kit / "runtime" / "build").exists()

    # Rebuilt wheels differ in their zip bytes (timestamps), not in their contents: same id, and the
    # bundle built first stays, byte for byte.
    wheel_bytes = (bundle / release["project_wheel"]).read_bytes()
    (project / "notes.txt").write_text("changed, still not part of a release")
    again = build(project, cache, kit=kit)
    assert again == {**release, "built": False}
    assert (bundle / release["project_wheel"]).read_bytes() == wheel_bytes
    assert sorted(p.name for p in cache.iterdir()) == [bundle.name, "wheels"]


def test_unchanged_sources_are_answered_without_building(first, kit):
    """Where pip could build nothing that needs its backend installed (no index), the wheels built
    before from the same sources still give their release; a changed tree is built again."""
    project, cache, release = first
    offline = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    again = build(project, cache, kit=kit, env=offline)
    assert again == {**release, "built": False}
    runtime = kit / "runtime" / "vmkit" / "__init__.py"
    source = runtime.read_text()
    runtime.write_text(source + "# changed\n")
    try:
        # The stand-in runtime's backend (flit_core) is not installed here: it needs the index.
        assert "building the runtime wheel failed" in run_build(project, cache, kit=kit, env=offline).stderr
    finally:
        runtime.write_text(source)


def test_a_changed_source_file_gives_a_new_id(first, project, kit, tmp_path):
    with (project / "src" / "shop" / "web.py").open("a") as f:
        f.write("# a change\n")
    changed = build(project, tmp_path / "cache", kit=kit)["release_id"]
    assert changed.startswith("1.4.0-") and changed != first[2]["release_id"]


def test_the_example_project_builds_with_the_real_kit(tmp_path):
    """The repository root is the example project; --kit defaults to the kit the script lives in."""
    release = build(REPO, tmp_path / "cache")
    bundle = Path(release["bundle"])
    assert "app/main.py" in members(bundle / release["project_wheel"])
    assert release["runtime_wheel"].startswith("vmkit-")
    assert any(name.startswith("vmkit/scheduler/") for name in members(bundle / release["runtime_wheel"]))


@pytest.mark.parametrize("missing", ["requirements.lock", "pyproject.toml"])
def test_a_project_without_its_files_is_refused_by_name(project, kit, tmp_path, missing):
    (project / missing).unlink()
    result = run_build(project, tmp_path / "cache", kit=kit)
    assert result.returncode != 0
    assert f"api_project_dir ({project}) has no {missing}" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_a_kit_without_its_runtime_is_refused(project, tmp_path):
    result = run_build(project, tmp_path / "cache", kit=tmp_path / "nokit")
    assert result.returncode != 0
    assert "runtime/pyproject.toml" in result.stderr and "gunicorn.conf.py" in result.stderr


def role_script(tasks_file: str, task_name: str) -> list[str]:
    """The `sh -euc` script of a command task of the api role and its fixed arguments."""
    tasks = yaml.safe_load((ANSIBLE_DIR / "roles" / "api" / "tasks" / tasks_file).read_text())
    found = [t for t in tasks if t["name"] == task_name]
    found += [t for block in tasks for t in block.get("block", []) if t["name"] == task_name]
    (task,) = found
    argv = task["ansible.builtin.command"]["argv"]
    assert argv[:2] == ["sh", "-euc"]
    return argv[:4]


def test_a_release_venv_is_a_linked_copy_of_the_locked_one_with_its_own_paths(first, tmp_path):
    """release.yml's copy of the venv of the locked dependencies, run on this machine: the release
    gets the base's files as hard links, scripts that run its own python, and the two wheels; the
    base keeps its own paths and gains nothing. prune.yml then keeps the base while a release was
    copied from it."""
    _, _, release = first
    root = tmp_path / "srv"
    base = root / "venvs" / "0123abcd-py3"
    # The hosts' interpreter, as release.yml creates the base venv with it.
    subprocess.run(["/usr/bin/python3", "-m", "venv", base], check=True)
    (base / ".complete").write_text("lock\n")
    release_dir = root / "releases" / release["release_id"]
    release_dir.mkdir(parents=True)
    bundle = Path(release["bundle"])
    copy = role_script("release.yml", "Copy the venv of the locked dependencies into the release and install "
                                      "the project and the kit runtime")
    subprocess.run([*copy, base, release_dir / "venv", release_dir / ".venv-base",
                    bundle / release["project_wheel"], bundle / release["runtime_wheel"]], check=True, timeout=300)

    venv = release_dir / "venv"
    assert (venv / "bin" / "pip").read_text().splitlines()[0] == f"#!{venv}/bin/python3"
    assert (base / "bin" / "pip").read_text().splitlines()[0] == f"#!{base}/bin/python3"
    assert str(base) not in (venv / "pyvenv.cfg").read_text()
    assert (release_dir / ".venv-base").read_text() == f"{base.name}\n"
    assert not (venv / ".complete").exists() and (base / ".complete").exists()
    linked = next((venv / "lib").glob("python3*/site-packages/pip/__init__.py"))
    assert linked.stat().st_nlink == 2
    imports = "import shop.web, vmkit"
    subprocess.run([venv / "bin" / "python", "-c", imports], check=True)
    assert subprocess.run([base / "bin" / "python", "-c", imports], capture_output=True).returncode != 0

    prune = role_script("prune.yml", "Remove the venvs of locked dependencies no kept release was copied from")
    stale = root / "venvs" / "fedcba98-py3"
    stale.mkdir()
    removed = subprocess.run([*prune, root / "venvs"], capture_output=True, text=True, check=True).stdout
    assert removed.split() == [stale.name] and base.is_dir()
    shutil.rmtree(release_dir)
    removed = subprocess.run([*prune, root / "venvs"], capture_output=True, text=True, check=True).stdout
    assert removed.split() == [base.name] and not base.exists()
