"""libvirt on the controller: its daemons (started here where no init system runs them), the
storage pool of the VM's volumes, and whether KVM really boots a kernel here or TCG it is."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from testhost_lib.base import run
from vagrant_vm_lib.common import BOX_CACHE, POOL, POOL_DIR, STARTED_DAEMONS, log

LIBVIRT = "qemu:///system"
KVM_PROBE_SECONDS = 20
# Started by `up` in this order where no init system runs them.
DAEMONS = ("virtlogd", "libvirtd")


def virsh(*args: str, check: bool = True) -> str:
    return run("virsh", "-c", LIBVIRT, *args, check=check, capture_output=True, text=True).stdout



def libvirtd_answers() -> bool:
    return run("virsh", "-c", LIBVIRT, "version", check=False, capture_output=True).returncode == 0


def ensure_libvirtd() -> None:
    if libvirtd_answers():
        return
    log("starting virtlogd and libvirtd (no init system runs them here)")
    for daemon in DAEMONS:
        run(daemon, "-d")
    deadline = time.monotonic() + 30
    while not libvirtd_answers():
        if time.monotonic() > deadline:
            raise SystemExit("libvirtd did not answer within 30 s")
        time.sleep(0.5)
    # Both have written their PID files by the time libvirtd answers.
    STARTED_DAEMONS.write_text("".join(f"{daemon} {Path(f'/run/{daemon}.pid').read_text().strip()}\n"
                                       for daemon in DAEMONS))


def stop_started_daemons() -> None:
    """End the daemons ensure_libvirtd started (by the PIDs it recorded), and no one else's."""
    if not STARTED_DAEMONS.exists():
        return
    for line in reversed(STARTED_DAEMONS.read_text().splitlines()):
        daemon, pid = line.split()
        comm = Path(f"/proc/{pid}/comm")
        if comm.exists() and comm.read_text().strip() == daemon:
            os.kill(int(pid), signal.SIGTERM)
            log(f"stopped {daemon} (PID {pid}), which `up` had started")
    STARTED_DAEMONS.unlink()


def volumes() -> list[str]:
    """The volumes in our pool (virsh prints a header and a rule above them)."""
    lines = virsh("vol-list", POOL).splitlines()[2:]
    return [line.split()[0] for line in lines if line.strip()]


def ensure_pool() -> None:
    if POOL in virsh("pool-list", "--all", "--name").split():
        return
    POOL_DIR.mkdir(parents=True, exist_ok=True)
    virsh("pool-define-as", POOL, "dir", "--target", str(POOL_DIR))
    virsh("pool-start", POOL)


def probe_kernel() -> Path:
    """The kernel the box gets (linux-image-amd64's current image, from the controller's own apt
    sources), without building the box: `accel` decides whether the VM runs at all, and where
    KVM does not work that must not cost the box's build. Only the package is fetched (~70 MB,
    5 s here) and its vmlinuz kept, cached per version."""
    depends = run("apt-cache", "depends", "linux-image-amd64", capture_output=True, text=True).stdout
    image = next(line.split()[1] for line in depends.splitlines() if line.strip().startswith("Depends: linux-image-"))
    kernel = BOX_CACHE / "kernel" / f"vmlinuz-{image.removeprefix('linux-image-')}"
    if kernel.exists():
        return kernel
    with tempfile.TemporaryDirectory() as tmp:
        # apt-get download writes into the current directory, as _apt where _apt may write.
        shutil.chown(tmp, user="_apt")
        run("apt-get", "download", "-q", image, cwd=tmp, stdout=subprocess.DEVNULL)
        deb = next(Path(tmp).glob("*.deb"))
        unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)  # its broken pipe when tar stops
        # --occurrence: tar stops at the image, near the start, instead of reading every module.
        run("tar", "-x", "-C", tmp, "--occurrence=1", f"./boot/{kernel.name}", stdin=unpack.stdout)
        unpack.stdout.close()
        unpack.wait()
        shutil.rmtree(kernel.parent, ignore_errors=True)
        kernel.parent.mkdir(parents=True)
        shutil.move(Path(tmp) / "boot" / kernel.name, kernel)
    return kernel


def accelerator() -> str:
    """libvirt's domain type: kvm when /dev/kvm runs the box's kernel to the end of its start
    (no root disk given: it panics at once) within KVM_PROBE_SECONDS, else qemu (TCG, about 8x
    slower). /dev/kvm can be there and still hang every stock kernel, as on this kind of machine."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "qemu"
    kernel = probe_kernel()
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "512",
                             "-display", "none", "-no-reboot", "-serial", "stdio", "-monitor", "none",
                             "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + KVM_PROBE_SECONDS
    seen = b""
    try:
        while time.monotonic() < deadline and b"Kernel panic" not in seen:
            seen += proc.stdout.read() or b""
            if proc.poll() is not None:
                seen += proc.stdout.read() or b""
                break
            time.sleep(0.2)
        return "kvm" if b"Kernel panic" in seen else "qemu"
    finally:
        proc.kill()
        proc.wait()

