#!/usr/bin/env python3
"""Build the release bundle on the controller and print it as JSON.

A release is two wheels built with `pip wheel --no-deps`: the project's (--project, any layout,
any package name, any build backend: what it packages is what gets installed) and the kit
runtime's (runtime/ of --kit), plus the project's requirements.lock and the kit's
gunicorn.conf.py. Both are built from a copy of their sources, so no build/ or *.egg-info is
left in (or picked up from) the working trees.

The release id is the version plus a hash of what the hosts get: the name and bytes of every
member of both wheels (not the zip files, which carry timestamps), the lock, gunicorn.conf.py
and the version. A bundle is kept in the cache per id and a build whose id is cached already is
thrown away, so deploying the same sources again copies the very same bytes (changed=0). The
bundle holds the four files and release.tar, the one archive a host is sent.

Building a wheel takes seconds, and most runs change no source (site.yml again) or only the
project's (a code change): the cache also keeps each wheel under a hash of the source tree it was
built from (every file's name and bytes, and this script), and a tree whose wheel is cached is not
built again.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path

# deploy/ansible/roles/api/files/build_release.py -> the kit's root.
KIT = Path(__file__).resolve().parents[5]
LOCK = "requirements.lock"
GUNICORN_CONF = "gunicorn.conf.py"
ARCHIVE = "release.tar"
# Never copied into a build tree: VCS data, environments, caches and earlier build output.
SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "__pycache__", "build", "dist", ".tox", ".nox",
             ".mypy_cache", ".pytest_cache", ".ruff_cache", "node_modules"}


def fail(message: str) -> None:
    sys.exit(f"build_release: {message}")


def check_inputs(project: Path, kit: Path) -> None:
    """Every missing file at once, each named with the setting that points at it."""
    problems = [f"api_project_dir ({project}) has no {name}"
                for name in ("pyproject.toml", LOCK) if not (project / name).is_file()]
    if not (project / LOCK).is_file() and (project / "pyproject.toml").is_file():
        problems[-1] += f" (the hash-pinned lock: make lock PROJECT={project})"
    problems += [f"the kit ({kit}) has no {name}"
                 for name in ("runtime/pyproject.toml", GUNICORN_CONF) if not (kit / name).is_file()]
    if problems:
        fail("; ".join(problems))


def source_files(root: Path) -> list[Path]:
    """The files of a source tree, relative to it: what git tracks or would track there, or,
    outside a git work tree, everything but SKIP_DIRS and compiled files."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."],
        capture_output=True, text=True, check=False) if shutil.which("git") else None
    if listed and listed.returncode == 0:
        files = [Path(name) for name in listed.stdout.split("\0") if name and (root / name).is_file()]
        if Path("pyproject.toml") in files:
            return files
    files = []
    for parent, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        files += [Path(parent, name).relative_to(root) for name in names if not name.endswith((".pyc", ".pyo"))]
    return files


def copy_tree(root: Path, dest: Path) -> None:
    for rel in source_files(root):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)


def tree_key(root: Path) -> str:
    """A hash of what building root's wheel reads: each of its files (name and bytes), and this
    script."""
    digest = hashlib.sha256(hashlib.sha256(Path(__file__).read_bytes()).hexdigest().encode())
    for rel in sorted(source_files(root)):
        digest.update(f"{rel.as_posix()}\n".encode())
        digest.update(hashlib.sha256((root / rel).read_bytes()).hexdigest().encode())
    return digest.hexdigest()[:32]


def cached_wheels(trees: dict[str, Path], cache: Path) -> dict[str, Path]:
    """The wheel of each tree, built only where the cache has none for its sources."""
    wanted = {name: cache / "wheels" / f"{name}-{tree_key(tree)}" for name, tree in trees.items()}
    missing = {name: tree for name, tree in trees.items() if len(list(wanted[name].glob("*.whl"))) != 1}
    if missing:
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
            work = Path(tmp)
            for name, tree in missing.items():
                copy_tree(tree, work / "src" / name)
            built = build_wheels({name: work / "src" / name for name in missing}, work / "wheels")
            for name, wheel in built.items():
                # Renamed into place whole: a concurrent build of the same sources may win.
                staged = work / "wheels" / name
                wanted[name].parent.mkdir(exist_ok=True)
                shutil.rmtree(wanted[name], ignore_errors=True)
                try:
                    os.rename(staged, wanted[name])
                except OSError:
                    if len(list(wanted[name].glob("*.whl"))) != 1:
                        raise
    return {name: next(wanted[name].glob("*.whl")) for name in trees}


def has_build_backend(tree: Path) -> bool:
    """Whether this interpreter already has everything the tree's [build-system] requires: then
    pip builds with it instead of installing the backend into an isolated environment first."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        return False
    requires = tomllib.loads((tree / "pyproject.toml").read_text()).get("build-system", {}).get("requires")
    if not requires:
        return False
    for text in requires:
        try:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate():
                continue
            if not requirement.specifier.contains(metadata.version(requirement.name), prereleases=True):
                return False
        except (InvalidRequirement, metadata.PackageNotFoundError):
            return False
    return True


def build_wheels(trees: dict[str, Path], out: Path) -> dict[str, Path]:
    """`pip wheel --no-deps` of each tree, side by side; each must give exactly one wheel."""
    procs = {}
    for name, tree in trees.items():
        (out / name).mkdir(parents=True)
        isolation = ["--no-build-isolation"] if has_build_backend(tree) else []
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-input", "--quiet",
             "--disable-pip-version-check", *isolation, "--wheel-dir", str(out / name), str(tree)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wheels, errors = {}, []
    for name, proc in procs.items():
        output = proc.communicate()[0]
        built = sorted((out / name).glob("*.whl"))
        if proc.returncode != 0 or len(built) != 1:
            errors.append(f"building the {name} wheel failed (pip wheel exit {proc.returncode}):\n{output}")
        else:
            wheels[name] = built[0]
    if errors:
        fail("\n".join(errors))
    return wheels


def wheel_version(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        return HeaderParser().parsestr(zf.read(metadata).decode())["Version"]


def release_id(wheels: dict[str, Path], lock: bytes, gunicorn_conf: bytes, version: str) -> str:
    digest = hashlib.sha256(f"version={version}\n".encode())
    for name, wheel in sorted(wheels.items()):
        with zipfile.ZipFile(wheel) as zf:
            for member in sorted(zf.namelist()):
                digest.update(f"{name}:{member}\n".encode())
                digest.update(hashlib.sha256(zf.read(member)).hexdigest().encode())
    for name, data in ((LOCK, lock), (GUNICORN_CONF, gunicorn_conf)):
        digest.update(f"{name}\n".encode())
        digest.update(hashlib.sha256(data).hexdigest().encode())
    return f"{version}-{digest.hexdigest()[:12]}"


def complete(bundle: Path) -> bool:
    names = {p.name for p in bundle.iterdir()} if bundle.is_dir() else set()
    return {LOCK, GUNICORN_CONF, ARCHIVE} <= names and len([n for n in names if n.endswith(".whl")]) == 2


def write_archive(bundle: Path) -> None:
    """release.tar of the bundle's files, root's and world-readable, with fixed times: the same
    files give the same bytes."""
    with tarfile.open(bundle / ARCHIVE, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(bundle.iterdir()):
            if path.name == ARCHIVE:
                continue
            info = tar.gettarinfo(path, arcname=path.name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode, info.mtime = 0o644, 0
            with path.open("rb") as data:
                tar.addfile(info, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True, type=Path,
                        help="the project to deploy (api_project_dir): pyproject.toml and requirements.lock")
    parser.add_argument("--kit", type=Path, default=KIT,
                        help=f"the kit: runtime/ and gunicorn.conf.py (default: {KIT})")
    parser.add_argument("--version", default="", help="APP_VERSION; empty = the version of the project's wheel")
    parser.add_argument("--cache", required=True, type=Path, help="where bundles are kept, one directory per id")
    args = parser.parse_args()

    project, kit, cache = args.project.resolve(), args.kit.resolve(), args.cache.resolve()
    check_inputs(project, kit)
    cache.mkdir(parents=True, exist_ok=True)
    lock, gunicorn_conf = (project / LOCK).read_bytes(), (kit / GUNICORN_CONF).read_bytes()
    wheels = cached_wheels({"project": project, "runtime": kit / "runtime"}, cache)
    if wheels["project"].name.split("-")[0] == wheels["runtime"].name.split("-")[0]:
        fail(f"the project's distribution has the kit runtime's name: {wheels['project'].name}")
    version = args.version or wheel_version(wheels["project"])
    rid = release_id(wheels, lock, gunicorn_conf, version)

    bundle = cache / rid
    built = not complete(bundle)
    if built:
        with tempfile.TemporaryDirectory(dir=cache, prefix=".bundle-") as tmp:
            staged = Path(tmp) / "bundle"
            staged.mkdir()
            for wheel in wheels.values():
                shutil.copy2(wheel, staged / wheel.name)
            (staged / LOCK).write_bytes(lock)
            (staged / GUNICORN_CONF).write_bytes(gunicorn_conf)
            write_archive(staged)
            # What an interrupted build left; a deploy running beside this one (another
            # inventory, same controller) may finish the same release first: then it stands.
            if bundle.exists() and not complete(bundle):
                shutil.rmtree(bundle, ignore_errors=True)
            try:
                os.rename(staged, bundle)
            except OSError:
                if not complete(bundle):
                    raise

    names = {w.name for w in bundle.glob("*.whl")}
    project_wheel = next(n for n in names if n.split("-")[0] == wheels["project"].name.split("-")[0])
    runtime_wheel = next(n for n in names if n != project_wheel)
    print(json.dumps({"release_id": rid, "version": version, "bundle": str(bundle), "archive": ARCHIVE,
                      "project_wheel": project_wheel, "runtime_wheel": runtime_wheel,
                      "lock_sha256": hashlib.sha256(lock).hexdigest(), "built": built}))


if __name__ == "__main__":
    main()
