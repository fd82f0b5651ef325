"""A test host's network: its veth link on the controller, NAT out through the controller
(an nftables table per host), and the resolvers and MTU the guest takes from the controller."""
from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

from testhost_lib.base import Error, run
from testhost_lib.hosts import Host


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def nameservers() -> list[str]:
    """The controller's IPv4 resolvers the guest can reach through NAT (loopback ones it cannot)."""
    for conf in ("/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"):
        with contextlib.suppress(OSError):
            found = []
            for line in Path(conf).read_text().splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    with contextlib.suppress(ValueError):
                        ip = ipaddress.ip_address(words[1])
                        if ip.version == 4 and not ip.is_loopback:
                            found.append(words[1])
            if found:
                return found
    raise Error("the controller has no non-loopback IPv4 nameserver for the guests")


def uplink_mtu() -> int:
    """MTU of the controller's default route: guest packets larger than it would stall after NAT."""
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        iface, dest = line.split()[:2]
        if dest == "00000000":
            return int(Path(f"/sys/class/net/{iface}/mtu").read_text())
    return 1500


def plumb(host: Host) -> None:
    """Controller side of the host's network; idempotent, so re-running `up` repairs it."""
    run("ip", "addr", "replace", f"{host.gateway}/24", "dev", host.veth)
    run("ip", "link", "set", host.veth, "mtu", uplink_mtu(), "up")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    rules = (f"table ip {host.table} {{}}\ndelete table ip {host.table}\n"
             f"table ip {host.table} {{\n chain postrouting {{\n"
             "  type nat hook postrouting priority srcnat; policy accept;\n"
             f'  ip saddr {host.subnet} oifname != "ve-*" masquerade\n }}\n}}\n')
    run("nft", "-f", "-", input=rules, text=True)

