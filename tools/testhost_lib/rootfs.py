"""The cached Debian 12 rootfs every test host boots from: debootstrapped once from the
controller's own mirror, made to look like a fresh VM, and kept per recipe under CACHE."""
from __future__ import annotations

import hashlib
import inspect
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from testhost_lib.base import Error, locked, log, remove_tree, run, unmount_under

# Outside the checkout so every clone on the machine reuses one build.
CACHE = Path("/var/cache/api-testhost")
SUITE = "bookworm"
# Bare on purpose: the playbook must install everything the service needs, as on a fresh VM.
PACKAGES = ("systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,python3,python3-apt,"
            "sudo,ca-certificates,iproute2,curl")
DEBOOTSTRAP = ("--variant=minbase", f"--include={PACKAGES}")
USER = "deploy"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def debian_sources() -> list[dict[str, list[str]]]:
    """The controller's apt sources for SUITE and its -updates/-security siblings, in order.

    Other suites (third-party repositories) are dropped: the guest must look like plain Debian.
    """
    entries: list[dict[str, list[str]]] = []
    listdir = Path("/etc/apt/sources.list.d")
    for path in sorted(listdir.glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip() or line[0].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() != "no":
                entries.append({k: fields.get(k, "").split()
                                for k in ("types", "uris", "suites", "components")})
    for path in [Path("/etc/apt/sources.list"), *sorted(listdir.glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 4:
                entries.append({"types": words[:1], "uris": words[1:2], "suites": words[2:3],
                                "components": words[3:]})
    return [e for e in entries
            if "deb" in e["types"] and e["components"]
            and e["suites"] and all(s == SUITE or s.startswith(SUITE + "-") for s in e["suites"])
            and all(u.startswith(("http://", "https://")) for u in e["uris"])]


def guest_sources(entries: list[dict[str, list[str]]]) -> str:
    return "\n".join(
        f"Types: deb\nURIs: {' '.join(e['uris'])}\nSuites: {' '.join(e['suites'])}\n"
        f"Components: {' '.join(e['components'])}\nSigned-By: {DEBIAN_KEYRING}\n"
        for e in entries)


def controller_files() -> list[Path]:
    """Controller files copied into the rootfs: apt settings (proxies, snapshot validity) and the
    extra CAs (outbound HTTPS may be intercepted; apt and pip in the guest must trust it too)."""
    return sorted(p for p in Path("/etc/apt/apt.conf.d").glob("*") if p.is_file()) + sorted(
        Path("/usr/local/share/ca-certificates").glob("*.crt"))


def customize_rootfs(root: Path, sources: str) -> None:
    apt = root / "etc/apt"
    (apt / "sources.list").unlink(missing_ok=True)
    (apt / "sources.list.d/debian.sources").write_text(sources)
    for f in controller_files():
        dest = apt / "apt.conf.d" if f.parent.name == "apt.conf.d" else root / "usr/local/share/ca-certificates"
        shutil.copy2(f, dest / f.name)
    run("chroot", root, "update-ca-certificates", capture_output=True, text=True)
    run("chroot", root, "useradd", "--create-home", "--shell", "/bin/bash", USER)
    sudoers = root / "etc/sudoers.d" / USER
    sudoers.write_text(f"{USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    run("systemctl", f"--root={root}", "enable", "--quiet", "systemd-networkd.service")
    # They take the dpkg lock at random times and would fail a playbook run mid-way.
    run("systemctl", f"--root={root}", "mask", "--quiet", "apt-daily.timer", "apt-daily-upgrade.timer")
    # Identity is per host and written at boot: host key, machine id, hostname.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/ssh/sshd_config.d/testhost.conf").write_text(
        "HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n")
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").unlink(missing_ok=True)
    # Like a fresh VM: no package lists, and an apt cache that looks never updated (the dir's
    # mtime is what `apt: cache_valid_time` checks), so the playbook must refresh it.
    run("chroot", root, "apt-get", "clean")
    lists = root / "var/lib/apt/lists"
    for f in lists.iterdir():
        if f.is_file() and f.name != "lock":
            f.unlink()
    os.utime(lists, (0, 0))


def recipe() -> tuple[str, str, str]:
    """(cache key, mirror, guest sources): the key changes whenever anything shaping the rootfs does."""
    entries = debian_sources()
    mirrors = [e["uris"][0] for e in entries if SUITE in e["suites"]]
    if not mirrors:
        raise Error(f"no Debian {SUITE} source in /etc/apt/sources.list(.d): cannot pick a mirror")
    sources = guest_sources(entries)
    h = hashlib.sha256()
    for part in (inspect.getsource(customize_rootfs), *DEBOOTSTRAP, SUITE, mirrors[0], sources):
        h.update(part.encode() + b"\0")
    for f in controller_files():
        h.update(str(f).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16], mirrors[0], sources


TAR = ("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*")


def build() -> Path:
    """The pristine rootfs directory for the current recipe, building or unpacking it if needed."""
    key, mirror, sources = recipe()
    rootfs, tarball = CACHE / key / "rootfs", CACHE / f"{key}.tar.zst"
    with locked(CACHE / ".lock"):
        if (CACHE / key / "complete").exists():
            return rootfs
        work = CACHE / f"{key}.work"
        unmount_under(work)  # debootstrap leaves /proc etc. mounted when it fails
        remove_tree(work)
        work.mkdir(parents=True)
        started = time.monotonic()
        if tarball.exists():
            log(f"unpacking {tarball}")
            run(*TAR, "-I", "zstd", "-xpf", tarball, "-C", work)
        else:
            log(f"building the Debian {SUITE} rootfs from {mirror} (about a minute)")
            run("debootstrap", *DEBOOTSTRAP, SUITE, work, mirror, stdout=subprocess.DEVNULL)
            customize_rootfs(work, sources)
            run(*TAR, "-I", "zstd -T0", "-cf", f"{tarball}.part", "-C", work, ".")
            os.replace(f"{tarball}.part", tarball)
        remove_tree(rootfs)
        rootfs.parent.mkdir(exist_ok=True)
        work.rename(rootfs)
        (CACHE / key / "complete").touch()
        log(f"rootfs {key} ready in {time.monotonic() - started:.0f} s")
        prune(key)
    return rootfs


def prune(keep: str) -> None:
    """Drops the builds of other recipes (~300 MB each) unless a host still runs on one."""
    mounts = Path("/proc/self/mountinfo").read_text()
    for entry in CACHE.iterdir():
        key = entry.name.split(".")[0]
        if key not in ("", keep) and f"{CACHE / key}/" not in mounts:
            if entry.is_dir():
                remove_tree(entry)
            else:
                entry.unlink()

