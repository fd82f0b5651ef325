#!/usr/bin/env python3
"""Build the release bundle of the API on the controller and print it as JSON.

The release id is the version plus a hash of everything a release is made of
(the package sources, the lock, gunicorn.conf.py and the version), so the same
inputs always give the same id and a second deploy of them changes nothing.
A bundle (wheel + requirements.lock + gunicorn.conf.py) is built once per id
into the cache and reused: wheels are not byte-reproducible, bundles are.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

# Top-level files that go into a release besides the package directory.
RELEASE_FILES = ("pyproject.toml", "requirements.lock", "gunicorn.conf.py")
# Read by the build when present (pyproject's `readme`), so part of the hash too.
OPTIONAL_FILES = ("README.md", "LICENSE")
PACKAGE_DIR = "app"


def release_inputs(source: Path) -> list[Path]:
    """Relative paths of every file that makes up a release, sorted."""
    missing = [name for name in RELEASE_FILES if not (source / name).is_file()]
    if missing or not (source / PACKAGE_DIR).is_dir():
        sys.exit(f"{source} is not an API source tree: missing {', '.join(missing) or PACKAGE_DIR + '/'}")
    files = [Path(name) for name in RELEASE_FILES + OPTIONAL_FILES if (source / name).is_file()]
    for path in sorted((source / PACKAGE_DIR).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.append(path.relative_to(source))
    return sorted(files)


def release_id(source: Path, files: list[Path], version: str) -> str:
    digest = hashlib.sha256(f"version={version}\n".encode())
    for rel in files:
        digest.update(f"{rel.as_posix()}\n".encode())
        digest.update(hashlib.sha256((source / rel).read_bytes()).hexdigest().encode())
    return f"{version}-{digest.hexdigest()[:12]}"


def build_bundle(source: Path, files: list[Path], bundle: Path) -> None:
    """Build the wheel from a copy of exactly the hashed files, then move the bundle in place."""
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=bundle.parent) as tmp:
        tree, out = Path(tmp, "src"), Path(tmp, "bundle")
        for rel in files:
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, tree / rel)
        out.mkdir()
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-input", "--quiet",
             "--disable-pip-version-check", "--wheel-dir", str(out), str(tree)],
            check=True, stdout=sys.stderr,
        )
        for name in ("requirements.lock", "gunicorn.conf.py"):
            shutil.copy2(tree / name, out / name)
        os.rename(out, bundle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path, help="the project directory")
    parser.add_argument("--version", default="", help="APP_VERSION; empty = the package version")
    parser.add_argument("--cache", required=True, type=Path, help="where bundles are kept")
    args = parser.parse_args()

    source = args.source.resolve()
    files = release_inputs(source)
    version = args.version or tomllib.loads((source / "pyproject.toml").read_text())["project"]["version"]
    rid = release_id(source, files, version)
    bundle = args.cache.resolve() / rid
    built = not bundle.is_dir()
    if built:
        build_bundle(source, files, bundle)
    wheels = sorted(bundle.glob("*.whl"))
    if len(wheels) != 1:
        sys.exit(f"{bundle} should hold exactly one wheel; remove it and deploy again")
    print(json.dumps({"release_id": rid, "version": version, "bundle": str(bundle),
                      "wheel": wheels[0].name, "built": built}))


if __name__ == "__main__":
    main()
