"""The templates of a deployment over several hosts: the lb's nginx site over the web hosts, the
firewall of a web host behind it and of the Redis host, and Redis bound to its private address."""

import re
import shutil

import pytest
from deploy_static import SERVER_NAME, make_throwaway_cert, peer_address, render
from test_deploy_host_config import nft_check
from test_deploy_nginx import block, directives, nginx_test

WEB = {"web1": ("api",), "web2": ("api",)}


def redis_binds(out) -> list[str]:
    return re.findall(r"^bind (.+)$", out.text("redis.conf"), re.M)


@pytest.fixture(scope="module")
def lb(tmp_path_factory):
    root = tmp_path_factory.mktemp("lb")
    make_throwaway_cert(root / "nginx" / "tls", SERVER_NAME)
    out = render(root, groups=("lb",), peers={**WEB, "sched1": ("scheduler", "redis")},
                 nginx_lb_upstream_ca_path=str(root / "nginx" / "tls" / f"{SERVER_NAME}.crt"))
    shutil.copy("/etc/nginx/mime.types", out.root / "nginx" / "mime.types")
    return out


def test_lb_site_is_valid_and_balances_over_the_web_hosts_private_addresses(lb):
    assert nginx_test(lb.nginx_conf) == ""
    site = lb.text("nginx/sites-enabled/api.conf")
    upstream = block(site, "upstream api_backend")
    assert directives(upstream, "server") == [f"{peer_address(i)}:443 max_fails=1 fail_timeout=5s" for i in range(2)]
    assert "unix:" not in site
    assert set(directives(site, "proxy_pass")) == {"https://api_backend"}
    assert directives(site, "proxy_ssl_verify") == ["on"]
    assert directives(site, "proxy_ssl_name") == [SERVER_NAME]
    # Nothing else runs on an lb: nginx takes every core.
    assert directives(lb.text("nginx/nginx.conf"), "worker_processes") == ["auto"]


def test_lb_retries_only_what_a_web_host_cannot_have_run(lb):
    site = lb.text("nginx/sites-enabled/api.conf")
    (retries,) = directives(site, "proxy_next_upstream")
    # Only a connection that failed: no timeout and no 502/504 (a web host's app may have run the
    # request), no non_idempotent (a POST that reached a web host is never sent to a second one),
    # no http_503 (the app's own "Redis is down" would take every web host out of the rotation).
    assert retries.split() == ["error"]
    assert directives(site, "set_real_ip_from") == []


def test_lb_keeps_the_public_limits_and_ports(lb):
    site = lb.text("nginx/sites-enabled/api.conf")
    assert "limit_req zone=api" in site and directives(site, "proxy_set_header").count("X-Forwarded-For $remote_addr") == 1
    rules = lb.text("nftables.conf")
    assert nft_check(lb.root / "nftables.conf") == ""
    assert "tcp dport { 22, 80, 443 } accept" in rules and "6379" not in rules


def test_web_host_behind_the_lb_takes_80_and_443_from_the_lb_only(tmp_path):
    out = render(tmp_path, groups=("api",), peers={"lb1": ("lb",), "sched1": ("scheduler", "redis")})
    rules = out.text("nftables.conf")
    assert nft_check(out.root / "nftables.conf") == ""
    assert "tcp dport { 22 } accept" in rules
    assert f"ip saddr {{ {peer_address(0)} }} tcp dport {{ 80, 443 }} accept" in rules
    # The lb holds many connections from one address: no per-address cap on it.
    assert "ct count" not in rules
    site = out.text("nginx/sites-enabled/api.conf")
    assert directives(site, "set_real_ip_from") == [peer_address(0)]
    assert directives(site, "real_ip_header") == ["X-Forwarded-For"]
    assert re.search(r"REDIS_URL=\"redis://api:[^@]+@10\.0\.0\.12:6379/0\"", out.text("api.env"))


def test_redis_host_binds_its_private_address_and_opens_redis_to_web_and_scheduler_hosts(tmp_path):
    out = render(tmp_path, groups=("redis", "scheduler"), peers={**WEB, "sched2": ("scheduler",), "lb1": ("lb",)})
    assert redis_binds(out) == ["127.0.0.1 10.0.0.5"]
    rules = out.text("nftables.conf")
    assert nft_check(out.root / "nftables.conf") == ""
    addresses = ", ".join(peer_address(i) for i in range(3))
    assert f"ip saddr {{ {addresses} }} tcp dport {{ 6379 }} accept" in rules
    assert "tcp dport { 22, 80, 443 } accept" in rules


def test_one_host_with_every_group_keeps_redis_on_loopback(rendered):
    assert redis_binds(rendered) == ["127.0.0.1"]
    assert "6379" not in rendered.text("nftables.conf")
    assert "@127.0.0.1:6379/0" in rendered.text("api.env")
