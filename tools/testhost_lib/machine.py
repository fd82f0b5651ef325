"""A test host's machine: the overlay root on the cached rootfs, made personal (name, address,
host key, the deploy user's key), booted with systemd-nspawn until its systemd is up, halted,
and removed without a trace."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from testhost_lib.base import Error, log, remove_tree, run, unmount_under
from testhost_lib.hosts import Host, Site
from testhost_lib.network import link_exists, nameservers, plumb, uplink_mtu
from testhost_lib.processes import (all_pids, host_processes, nspawns, pid_namespace, proc_stat, signal_all,
                                   wait_gone)
from testhost_lib.rootfs import USER

BOOT_TIMEOUT = 120
STOP_TIMEOUT = 20


def halt(host: Host, hard: bool = False) -> None:
    """End the host's machine: a clean poweroff (hard: pulling the plug), or whatever it takes."""
    outer, inner = host_processes(host)
    if hard:
        # Killing the container's PID 1 ends its whole PID namespace at once: no service gets to
        # stop, no connection is closed, as when a VM loses power.
        stats = {pid: proc_stat(pid) for pid in inner}
        signal_all([pid for pid, st in stats.items() if st and st[1] not in stats], signal.SIGKILL)
    elif outer:
        signal_all(outer, signal.SIGTERM)  # nspawn asks the guest's systemd for a clean poweroff
    else:
        # nspawn died (or was killed) and left the guest running: ask its systemd directly.
        stats = {pid: proc_stat(pid) for pid in inner}
        init = [pid for pid, st in stats.items() if st and st[1] not in stats]
        signal_all(init, signal.SIGRTMIN + 4)
    left = wait_gone(outer + inner, STOP_TIMEOUT)
    if left:
        log(f"{host.name}: no clean poweroff within {STOP_TIMEOUT} s, killing {left}")
        signal_all(left, signal.SIGKILL)  # killing the container's PID 1 ends its whole namespace
        left = wait_gone(left, 5)
        if left:
            raise Error(f"{host.name}: processes {left} survive SIGKILL")


def stop(host: Host) -> None:
    """Remove every trace of a host, whatever state a crash or a half-done start left it in."""
    halt(host)
    unmount_under(Path(host.dir))
    if run("nft", "list", "table", "ip", host.table, check=False, capture_output=True).returncode == 0:
        run("nft", "delete", "table", "ip", host.table)
    if link_exists(host.veth):
        run("ip", "link", "delete", host.veth)
    run("ip", "route", "delete", *host.off_route, check=False, capture_output=True)
    remove_tree(Path(host.dir))


def personalize(site: Site, host: Host) -> None:
    """Per-host files, written into the overlay's upper layer so the cached rootfs stays pristine."""
    etc = host.root / "etc"
    (etc / "hostname").write_text(f"{host.name}\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}.test {host.name}\n"
                               "::1\tlocalhost ip6-localhost ip6-loopback\n")
    (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
    (etc / "resolv.conf").unlink(missing_ok=True)
    (etc / "resolv.conf").write_text("".join(f"nameserver {ns}\n" for ns in nameservers()))
    # 10- sorts before nspawn's own 80-container-host0.network (DHCP); without link-local and RA
    # handling, network-online.target is reached at once instead of ~13 s later.
    (etc / "systemd/network/10-host0.network").write_text(
        f"[Match]\nName=host0\n\n[Link]\nMTUBytes={uplink_mtu()}\n\n[Network]\n"
        f"Address={host.address}/24\nGateway={host.gateway}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    hostkey = etc / "ssh/ssh_host_ed25519_key"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}", "-f", hostkey)
    host.hostkey = " ".join(hostkey.with_suffix(".pub").read_text().split()[:2])
    passwd = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    uid, gid = int(passwd[USER][2]), int(passwd[USER][3])
    sshdir = host.root / "home" / USER / ".ssh"
    sshdir.mkdir(mode=0o700, exist_ok=True)
    authorized = sshdir / "authorized_keys"
    authorized.write_text(site.key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    for p in (sshdir, authorized):
        os.chown(p, uid, gid)


def console_tail(host: Host, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(Path(host.dir, "console.log").read_text(errors="replace").splitlines()[-lines:])
    return ""


def system_state(site: Site, host: Host, wait: bool, timeout: float) -> str | None:
    """`systemctl is-system-running` on the host; None if SSH cannot reach it."""
    cmd = site.ssh(host) + ["systemctl", "is-system-running"] + (["--wait"] if wait else [])
    try:
        r = run(*cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return None if r.returncode == 255 else r.stdout.strip()


def failed_units(site: Site, host: Host) -> str:
    r = run(*site.ssh(host), "systemctl", "--failed", "--plain", "--no-legend",
            check=False, capture_output=True, text=True)
    return r.stdout.strip() or r.stderr.strip()


def wait_ready(site: Site, host: Host) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        if not proc_stat(host.pid):
            raise Error(f"{host.name}: systemd-nspawn exited while booting; console:\n{console_tail(host)}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Error(f"{host.name}: no SSH within {BOOT_TIMEOUT} s; console:\n{console_tail(host)}")
        state = system_state(site, host, wait=True, timeout=remaining)
        if state == "running":
            return
        if state is not None:
            raise Error(f"{host.name} booted {state!r}; failed units:\n{failed_units(site, host)}")
        time.sleep(0.3)


def mount_root(host: Host) -> None:
    hostdir = Path(host.dir)
    run("mount", "-t", "overlay", "overlay", "-o",
        f"lowerdir={host.lower},upperdir={hostdir / 'upper'},workdir={hostdir / 'work'}", host.root)


def boot(site: Site, host: Host, lower: Path) -> None:
    hostdir = Path(host.dir)
    for d in ("upper", "work", "root"):
        (hostdir / d).mkdir(parents=True, exist_ok=True)
    host.lower = str(lower)
    host.save()  # from here on `down` finds and cleans whatever this start leaves behind
    mount_root(host)
    personalize(site, host)
    host.save()
    site.write_access_files()
    launch(site, host)


def launch(site: Site, host: Host) -> None:
    """Start the machine on its mounted root and wait until its systemd is up."""
    hostdir = Path(host.dir)
    host.pidns = ""
    with open(hostdir / "console.log", "ab") as console:
        proc = subprocess.Popen(
            ["systemd-nspawn", "-b", "-D", str(host.root), "-M", host.name, "--register=no",
             "--keep-unit", "--network-veth", "--console=read-only", "--resolv-conf=off"],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            start_new_session=True)  # survives this command and the operator's Ctrl-C
    host.pid, host.start = proc.pid, proc_stat(proc.pid)[2]
    host.save()
    deadline = time.monotonic() + 10
    while not link_exists(host.veth) or not host.pidns:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise Error(f"{host.name}: systemd-nspawn did not start; console:\n{console_tail(host)}")
        own = pid_namespace(os.getpid())
        for pid in all_pids():
            st = proc_stat(pid)
            if st and st[1] == host.pid and pid_namespace(pid) not in ("", own):
                host.pidns = pid_namespace(pid)
        time.sleep(0.05)
    host.save()
    plumb(host)
    wait_ready(site, host)
    host.status = "running"
    host.save()


def is_ours(host: Host) -> bool:
    st = proc_stat(host.pid) if host.pid else None
    return bool(st and st[2] == host.start and host.pid in host_processes(host)[0])


def check_foreign(host: Host) -> None:
    for pid, name, root in nspawns():
        if name == host.name and root != str(host.root):
            raise Error(f"machine {host.name} is already run by another checkout "
                        f"(systemd-nspawn pid {pid}, root {root}); use another --prefix/--net")

