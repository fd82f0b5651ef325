"""The Vagrant box, built here instead of downloaded: tools/testhost's cached Debian 12 rootfs
with a kernel, GRUB on a raw disk and the roles' packages, as a libvirt qcow2 box cached beside
the rootfs and registered with vagrant."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import time
from pathlib import Path

import yaml

# Named as prepare_guest's source calls it: that source is part of the box's cache key.
from testhost_lib import network as testhost
from testhost_lib.base import PROJECT, remove_tree, run, unmount_under
from testhost_lib.rootfs import build as build_rootfs
from testhost_lib.rootfs import recipe as rootfs_recipe
from vagrant_vm_lib.common import BOX, BOX_CACHE, log

DISK_GB = 8


def role_packages() -> list[str]:
    """The Debian packages the roles' apt tasks install, by name or through a variable of the
    role's defaults: read from the roles, so the box follows them."""
    roles = PROJECT / "deploy" / "ansible" / "roles"
    found: list[str] = []

    def walk(tasks: list, defaults: dict) -> None:
        for task in tasks or []:
            walk(task.get("block"), defaults)
            names = (task.get("ansible.builtin.apt") or {}).get("name", [])
            if isinstance(names, str) and names.startswith("{{"):
                # Not in the defaults: derived from the inventory's groups (the exporters and the
                # monitoring stack), which the play installs where its groups want them, so that
                # the box does not run them on every VM.
                names = defaults.get(names.strip("{} "), [])
            found.extend([names] if isinstance(names, str) else names)

    for role in sorted(roles.iterdir()):
        defaults_file = role / "defaults" / "main.yml"
        defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
        for tasks in sorted((role / "tasks").glob("*.yml")):
            walk(yaml.safe_load(tasks.read_text()), defaults)
    return sorted(set(found))


def prepare_guest(root: Path) -> None:
    """What a Vagrant box has beyond the test hosts' rootfs: a kernel and udev, a disk to boot
    from, DHCP on its first interface, the vagrant user with Vagrant's insecure key (vagrant up
    replaces it), and the Debian packages of the roles, preinstalled as in many public boxes:
    under TCG unpacking them in the VM costs minutes (dpkg's xz alone), here seconds. site.yml
    still runs every apt task; it finds them installed."""
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("".join(f"nameserver {ns}\n" for ns in testhost.nameservers()))
    install = "DEBIAN_FRONTEND=noninteractive apt-get -q -y install"
    # The roles' packages as their apt tasks install them: with apt's default for recommends.
    run("systemd-nspawn", "-q", "-D", root, "--register=no", "--keep-unit", "--resolv-conf=off",
        "sh", "-c", f"apt-get -q update && {install} --no-install-recommends linux-image-amd64 "
        f"initramfs-tools udev e2fsprogs && {install} {' '.join(role_packages())} && apt-get clean",
        stdout=subprocess.DEVNULL)
    (root / "etc/fstab").write_text("LABEL=root / ext4 errors=remount-ro 0 1\n")
    network = root / "etc/systemd/network"
    (network / "10-host0.network").unlink(missing_ok=True)
    (network / "90-dhcp.network").write_text(
        f"[Match]\nName=eth0\n\n[Link]\nMTUBytes={testhost.uplink_mtu()}\n\n"
        "[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    # The rootfs has no host keys (each test host gets its own): a VM makes them at first boot.
    (root / "etc/systemd/system/ssh-host-keys.service").write_text(
        "[Unit]\nDescription=Create the SSH host keys of this machine\nBefore=ssh.service\n"
        "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n"
        "[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n[Install]\nRequiredBy=ssh.service\n")
    run("systemctl", f"--root={root}", "enable", "--quiet", "ssh-host-keys.service")
    (root / "etc/ssh/sshd_config.d/vagrant.conf").write_text("UseDNS no\n")
    run("chroot", root, "useradd", "--create-home", "--shell", "/bin/bash", "vagrant")
    sudoers = root / "etc/sudoers.d/vagrant"
    sudoers.write_text("vagrant ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    insecure = next(Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-*/keys/vagrant.pub"))
    ssh = root / "home/vagrant/.ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text(insecure.read_text())
    run("chroot", root, "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh")
    (root / "etc/hostname").write_text("debian\n")


def grub_config() -> str:
    """GRUB's only configuration, built into its core image: no grub-install, so the disk needs no
    loop device with partitions (unavailable in containers).

    tsc=reliable: under TCG the Vagrantfile's CPU (QEMU's "max", an AMD model) makes Linux distrust
    the TSC of a 2-CPU guest, and every clock read then goes to the emulated HPET: 19 us instead
    of 2.6 us with the TSC, measured in the VM. TCG's TSC is the host's, the same on every vCPU;
    with KVM the guest uses kvm-clock anyway."""
    return ("set root=(hd0,msdos1)\n"
            "linux /vmlinuz root=LABEL=root ro console=ttyS0 net.ifnames=0 tsc=reliable quiet\n"
            "initrd /initrd.img\nboot\n")


def write_disk(root: Path, work: Path) -> Path:
    """A raw disk: MBR with GRUB's boot sector, GRUB's core right after it, one ext4 partition
    at 1 MiB made from the directory tree (mke2fs -d: no mount)."""
    disk, part, core, cfg = work / "disk.raw", work / "root.ext4", work / "core.img", work / "grub.cfg"
    size = DISK_GB * 1024 ** 3
    run("truncate", "-s", size - 1024 ** 2, part)
    run("mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", root, part)
    cfg.write_text(grub_config())
    run("grub-mkimage", "-O", "i386-pc", "-o", core, "-c", cfg, "-p", "(hd0,msdos1)/boot/grub",
        "biosdisk", "part_msdos", "ext2", "linux", "boot")
    if core.stat().st_size > 1024 ** 2 - 512:
        raise SystemExit("GRUB's core image does not fit before the partition")
    run("truncate", "-s", size, disk)
    run("sfdisk", "-q", disk, input="label: dos\nstart=2048, type=83, bootable\n", text=True)
    # 440 bytes: the boot code only, the partition table stays. It loads the core from sector 1.
    run("dd", "status=none", "conv=notrunc", "bs=440", "count=1", "if=/usr/lib/grub/i386-pc/boot.img", f"of={disk}")
    run("dd", "status=none", "conv=notrunc", "bs=512", "seek=1", f"if={core}", f"of={disk}")
    run("dd", "status=none", "conv=notrunc,sparse", "bs=1M", "seek=1", f"if={part}", f"of={disk}")
    part.unlink()
    return disk


BOX_VAGRANTFILE = """# Built by tools/vagrant-vm from the test hosts' Debian 12 rootfs.
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |lv|
    lv.disk_bus = "virtio"
  end
end
"""


def recipe_key() -> str:
    h = hashlib.sha256(rootfs_recipe()[0].encode())
    for part in (prepare_guest, grub_config, write_disk, BOX_VAGRANTFILE, " ".join(role_packages())):
        h.update((part if isinstance(part, str) else inspect.getsource(part)).encode())
    return h.hexdigest()[:16]


def build_box() -> Path:
    """The box file for the current rootfs and recipe (built once, cached beside the rootfs)."""
    key = recipe_key()
    box = BOX_CACHE / f"{key}.box"
    if box.exists():
        return box
    rootfs = build_rootfs()
    started = time.monotonic()
    work = BOX_CACHE / f"{key}.work"
    root = work / "root"
    unmount_under(work)
    remove_tree(work)
    for d in ("upper", "ovl", "root"):
        (work / d).mkdir(parents=True)
    log(f"building the box from {rootfs}")
    try:
        run("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={rootfs},upperdir={work / 'upper'},workdir={work / 'ovl'}", root)
        prepare_guest(root)
        disk = write_disk(root, work)
        unmount_under(work)
        run("qemu-img", "convert", "-O", "qcow2", disk, work / "box.img")
        disk.unlink()
        (work / "metadata.json").write_text(json.dumps(
            {"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GB}))
        (work / "Vagrantfile").write_text(BOX_VAGRANTFILE)
        run("tar", "-cf", f"{box}.part", "-C", work, "metadata.json", "Vagrantfile", "box.img")
        os.replace(f"{box}.part", box)
    finally:
        unmount_under(work)
        remove_tree(work)
    for old in BOX_CACHE.iterdir():
        if old.is_file() and old.stem != key:
            old.unlink()
    log(f"box {box} built in {time.monotonic() - started:.0f} s")
    return box


def register_box(box: Path) -> None:
    """Registers the box under BOX unless this very build is already registered."""
    stamp = Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d")) / "api-kit-box"
    if stamp.exists() and stamp.read_text() == box.name and BOX in run(
            "vagrant", "box", "list", capture_output=True, text=True).stdout:
        return
    run("vagrant", "box", "add", "--force", "--name", BOX, box, stdout=subprocess.DEVNULL)
    stamp.write_text(box.name)

