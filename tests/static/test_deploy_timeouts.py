"""The keep-alive and timeout chain as rendered for the hosts, in one place: each idle timeout
below the next one along the request path, so that the side that sends requests (the lb, nginx)
always drops an idle connection before the side that answers them, and every stop waits for what
it lets run. The input validation refuses a chain out of order (test_deploy_ansible.py)."""

import re

import pytest
from deploy_static import env_file, render, unit_settings
from test_deploy_nginx import block, directives

LONG = {"path": "/reports", "timeout": 25}


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s?)", value)
    assert match, f"not whole seconds: {value}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    return render(tmp_path_factory.mktemp("web"), groups=("api", "scheduler", "redis"),
                  peers={"lb1": ("lb",)}, api_long_requests=[LONG])


@pytest.fixture(scope="module")
def lb(tmp_path_factory):
    return render(tmp_path_factory.mktemp("lb"), groups=("lb",), peers={"web1": ("api",), "redis1": ("redis",)})


def test_idle_connections_are_dropped_by_the_sender_first_from_the_lb_to_the_workers(web, lb):
    lb_upstream = seconds(directives(block(lb.text("nginx/sites-enabled/api.conf"), "upstream api_backend"),
                                     "keepalive_timeout")[0])
    web_clients = seconds(directives(web.text("nginx/nginx.conf"), "keepalive_timeout")[0])
    web_upstream = seconds(directives(block(web.text("nginx/sites-enabled/api.conf"), "upstream api_backend"),
                                      "keepalive_timeout")[0])
    env = env_file(web.text("api.env"))
    stop = float(unit_settings(web.text("units/api.service"))["TimeoutStopSec"][0])
    chain = [lb_upstream, web_clients]
    assert chain == sorted(set(chain)), f"lb upstream idle {lb_upstream} s < web nginx client idle {web_clients} s"
    chain = [web_upstream, float(env["API_KEEPALIVE"]), float(env["API_DRAIN_SECONDS"]),
             float(env["API_GRACEFUL_TIMEOUT"]), stop]
    assert chain == sorted(set(chain)), ("nginx upstream idle < API_KEEPALIVE < API_DRAIN_SECONDS"
                                         f" < API_GRACEFUL_TIMEOUT < TimeoutStopSec: {chain}")


def test_every_request_nginx_waits_for_fits_in_a_stop(web):
    env = env_file(web.text("api.env"))
    graceful = float(env["API_GRACEFUL_TIMEOUT"])
    site = web.text("nginx/sites-enabled/api.conf")
    reads = [seconds(value) for value in directives(site, "proxy_read_timeout")]
    assert len(reads) == 2 and LONG["timeout"] in reads
    # A restart or deploy lets a request run for the graceful timeout, then ends it.
    assert max(reads) <= graceful
    scheduler_stop = float(unit_settings(web.text("units/api-scheduler.service"))["TimeoutStopSec"][0])
    assert scheduler_stop > float(env["SCHEDULER_DRAIN_TIMEOUT"])
