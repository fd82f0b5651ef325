"""`make bench`: the kit's deployed stack against its peers and its limits, on this machine.

    .venv/bin/python bench/run.py [--seconds 5] [--rounds 3] [--keep]

Boots a bare test host (tools/testhost, bench1 on 10.231.121.0/24) and times the playbooks on it
and on a second host, bench2, as `make bench-deploy` does (bench/deploy.py: the provisioning rows
and their slowest tasks); then, bench2 gone, runs bench/host/measure.py on bench1: every server
of the table on the host's loopback, medians of alternating rounds. Restart, reload and deploy.yml run under load. Prints a markdown
table and writes bench/out/latest.{json,md,png}. Not a test: it asserts nothing, the ratios are
the result (the machine is shared and noisy; absolute rates are a floor).
"""

import argparse
import base64
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The e2e suite's drivers of tools/testhost and of a host: one way to boot, reach and provision.
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "e2e")]
from api_host import ApiHost  # noqa: E402
from deploy import checked, log, provisioning  # noqa: E402
from deploy import markdown as deploy_markdown  # noqa: E402
from e2e_support import TestHosts  # noqa: E402

OUT = REPO / "bench" / "out"
HOST_DIR = "/var/tmp/bench"
MEASURE = ["sudo", "-n", "python3", f"{HOST_DIR}/measure.py"]
ROUTE_LABELS = {"health": "/health", "small_json": "GET /cache/bench (small JSON, Redis)",
                "post": "POST /counters/bench (Redis)", "large_500kb": "/large-response 500 KB",
                "db_read": "GET /notes/count (PostgreSQL)"}
# Every server of the table, and each pool size measured, holds its own pools at once: more
# connections than the deployed services alone, which max_connections is derived from, need.
BENCH_VARS = {"postgres_max_connections": 300}
# Targets of the kit on a 2-core machine (see docs/performance.md).
TARGETS = {"a/c": 2.5, "a/b": 0.75, "redis GET a/b": 0.75, "redis POST a/b": 0.75, "b/g": 0.90,
           "metrics on/off": 0.95, "large a/c": 4.0, "large bytes c/a": 8.0}
# gunicorn worker counts of the sizing rows (the stack's /health with API_WORKERS set to each).
SIZING_WORKERS = "1,2,4"


def copy_tools(host: ApiHost) -> None:
    """bench/host/ to the host, and the load generators and peers it runs."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(REPO / "bench" / "host", arcname=".", filter=lambda t: None if "__pycache__" in t.name else t)
    host.sh(f"rm -rf {HOST_DIR} && mkdir -p {HOST_DIR} && cd {HOST_DIR} && "
            f"echo {base64.b64encode(archive.getvalue()).decode()} | base64 -d | tar xz")
    host.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
            "wrk nghttp2-client >/dev/null && python3 -m venv /var/tmp/bench-peers && "
            "/var/tmp/bench-peers/bin/pip install -q granian", timeout=600)


def measure(host: ApiHost, *args: str, timeout: float = 3600) -> dict:
    result = host.sh(shlex.join([*MEASURE[2:], *args]), timeout=timeout)
    return json.loads(result.stdout.splitlines()[-1])


def under_load(host: ApiHost, event) -> dict:
    """Failed requests and worst latency of GET + POST load through nginx while `event` runs."""
    stop = f"{HOST_DIR}/stop"
    host.sh(f"rm -f {stop}")
    load = subprocess.Popen([*host.ssh_command, *MEASURE, "load", "--server-name", host.server_name,
                             "--stop-file", stop], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(3)
    started = time.monotonic()
    event()
    seconds = time.monotonic() - started
    time.sleep(3)
    host.sh(f"touch {stop}")
    out, err = load.communicate(timeout=120)
    if load.returncode != 0:
        sys.exit(f"bench: load on the host failed:\n{out}\n{err}")
    return {**json.loads(out.splitlines()[-1]), "event_seconds": round(seconds, 1)}


def measure_host(args, host: ApiHost) -> dict:
    # Back to the project's own version: bench/deploy.py deployed copies of it.
    version = host.health()["version"].split("-bench")[0]
    workers = host.sh("systemctl show -p MainPID --value api | xargs -I{} cat /proc/{}/task/{}/children"
                      ).stdout.split()
    copy_tools(host)
    idle = measure(host, "memory")
    log(f"throughput: {args.rounds} rounds of {args.seconds:.0f} s per cell")
    table = measure(host, "peers", "--server-name", host.server_name, "--workers", str(len(workers)),
                    "--seconds", str(args.seconds), "--rounds", str(args.rounds))
    log("database pool sizes")
    pools = measure(host, "pools", "--server-name", host.server_name, "--seconds", str(args.seconds),
                    "--rounds", str(args.rounds))
    log(f"sizing: the stack with {SIZING_WORKERS} workers")
    sizing = measure(host, "sizing", "--server-name", host.server_name, "--workers", SIZING_WORKERS,
                     "--seconds", str(args.seconds), "--rounds", str(args.rounds))
    log("the stack with its metrics on and off")
    metrics = measure(host, "metrics", "--server-name", host.server_name,
                      "--seconds", str(args.seconds), "--rounds", str(args.rounds))
    log("streams: time to first event, idle streams held")
    streams = measure(host, "streams", "--server-name", host.server_name, "--workers", str(len(workers)),
                      "--connections", str(args.streams))
    log("restart, reload and deploy under load")
    deploy: dict = {}
    events = {
        "systemctl restart api": lambda: host.sh("systemctl restart api"),
        "systemctl reload api": lambda: host.sh("systemctl reload api && sleep 5"),
        "deploy.yml (new release)": lambda: deploy.update(
            run=checked(host.playbook("deploy.yml", "-e", f"api_version={version}-bench"))),
    }
    disruptions = {name: under_load(host, event) for name, event in events.items()}
    return {
        "workers": len(workers),
        **table,
        "disruptions": disruptions,
        "streams": streams,
        "pools": pools,
        "sizing": sizing,
        "metrics": metrics,
        "memory_idle_mib": idle,
    }


# ------------------------------------------------------------------ report


def cell(result: dict, server: str, route: str, protocol: str = "h1") -> dict | None:
    return next((c for c in result["cells"] if (c["server"], c["route"], c["protocol"])
                 == (server, route, protocol)), None)


def ratios(result: dict) -> dict[str, float]:
    def rps(server: str, route: str = "health") -> float:
        return cell(result, server, route)["rps"]

    found = {f"a/{other}": rps("a") / rps(other) for other in ("c", "b", "e1", "e2", "f")}
    for name, route in (("redis GET", "small_json"), ("redis POST", "post")):
        found[f"{name} a/b"] = rps("a", route) / rps("b", route)
    found["b/g"] = rps("b") / rps("g")
    found["metrics on/off"] = result["metrics"]["rps"]["on"] / result["metrics"]["rps"]["off"]
    found["db a/b"] = rps("a", "db_read") / rps("b", "db_read")
    found["large a/c"] = rps("a", "large_500kb_gzip") / rps("c", "large_500kb")
    found["large bytes c/a"] = (cell(result, "c", "large_500kb")["bytes_per_request"]
                                / cell(result, "a", "large_500kb_gzip")["bytes_per_request"])
    return {name: round(value, 2) for name, value in found.items()}


def rates_table(title: str, label: str, rates: dict[str, int]) -> list[str]:
    """One markdown row of rates under a header row of what each was measured with."""
    return [f"| {title} | " + " | ".join(rates) + " |", "| --- |" + " ---: |" * len(rates),
            f"| {label} | " + " | ".join(f"{rate:,}" for rate in rates.values()) + " |"]


def markdown(result: dict) -> str:
    servers = result["servers"]
    lines = [f"# make bench, {result['date']}", "",
             f"{result['machine']}; wrk -t2 -c64 (HTTP/1.1 keep-alive) and h2load -c64 -m1 (HTTP/2), "
             f"{result['seconds']:.0f} s per cell, median of {result['rounds']} alternating rounds; "
             f"{result['workers']} gunicorn workers.", "",
             "| server | route | proto | req/s | p50 ms | p99 ms | bytes/resp | failed | rounds req/s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for c in result["cells"]:
        size = f"{c['bytes_per_request']:,.0f}" if c["bytes_per_request"] else ""
        route = ROUTE_LABELS.get(c["route"], ROUTE_LABELS["large_500kb"] + ", gzip")
        lines.append(f"| ({c['server']}) {servers[c['server']]} | {route} | {c['protocol']} | "
                     f"{c['rps']:,.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {size} | "
                     f"{c['failed']} | {' '.join(map(str, c['rounds_rps']))} |")
    lines += ["", "| ratio (req/s, /health unless named) | value | target |", "| --- | ---: | ---: |"]
    for name, value in result["ratios"].items():
        target = TARGETS.get(name)
        lines.append(f"| {name} | {value:.2f} | {f'>= {target}' if target else ''} |")
    lines += ["", "| under GET + POST load (32 + 32 connections) | requests | failed | worst ms | event s |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, row in result["disruptions"].items():
        lines.append(f"| {name} | {row['requests']:,} | {row['failed']} | {row['max_ms']:,.0f} | "
                     f"{row['event_seconds']} |")
    streams = result["streams"]
    idle = streams["idle"]
    lines += ["", "| SSE (`GET /counters/{name}/events`) | (a) kit stack | (b) app direct |", "| --- | ---: | ---: |",
              f"| time to first event on a new connection (TLS for (a)), median ms | {streams['ttfe_ms']['a']} | "
              f"{streams['ttfe_ms']['b']} |",
              f"| idle streams held (of {idle['asked']} opened) | {idle['held']:,} | |",
              f"| KiB per idle stream: gunicorn workers, nginx | {idle['kib_per_stream']['gunicorn']}, "
              f"{idle['kib_per_stream']['nginx']} | |"]
    if idle["first_failure"]:
        lines.append(f"| first stream refused | {idle['first_failure']} | |")
    pools = result["pools"]
    lines += ["", *rates_table("DATABASE_POOL_SIZE (GET /notes/count, gunicorn direct)", "req/s", pools["rps"]),
              "", f"Pool size to use (the smallest within {1 - pools['within']:.0%} of the best): **{pools['recommended']}** "
              "per worker (api_database_pool_size)."]
    sizing = result["sizing"]
    lines += ["", *rates_table(f"gunicorn workers (API_WORKERS; {sizing['nginx_workers']} nginx worker(s))",
                               "(a) /health req/s", sizing["rps"])]
    lines += ["", *rates_table("Prometheus metrics of the workers", "(a) /health req/s", result["metrics"]["rps"])]
    lines += ["", deploy_markdown(result).rstrip("\n")]
    lines += ["", "| process | RSS MiB idle | RSS MiB under /health load |", "| --- | ---: | ---: |"]
    for name, value in result["memory_idle_mib"].items():
        lines.append(f"| {name} | {value} | {result['memory_under_load_mib'].get(name, '')} |")
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(15, 5.5))
    health = [c for c in result["cells"] if c["route"] == "health" and c["protocol"] == "h1"]
    left.barh([f"({c['server']}) {result['servers'][c['server']]}"[:62] for c in health],
              [c["rps"] for c in health], color="tab:blue")
    left.invert_yaxis()
    left.set_xlabel("/health, requests per second (HTTP/1.1, wrk -c64)")
    names = list(result["ratios"])
    right.barh(names, [result["ratios"][n] for n in names], color="tab:green")
    for i, name in enumerate(names):
        if name in TARGETS:
            right.plot([TARGETS[name]] * 2, [i - 0.4, i + 0.4], color="tab:red")
    right.invert_yaxis()
    right.set_xlabel("ratio (red: target)")
    figure.suptitle(f"make bench {result['date']} — {result['machine']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def machine() -> str:
    model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name"))
    return f"{os.cpu_count()} CPUs ({model}), Debian {Path('/etc/debian_version').read_text().strip()}"


def main() -> None:
    parser = argparse.ArgumentParser(description="the deployed stack against its peers")
    parser.add_argument("--seconds", type=float, default=5, help="measured seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=4000, help="idle SSE streams to try to hold")
    parser.add_argument("--keep", action="store_true", help="leave the test host running (profiling)")
    args = parser.parse_args()
    hosts = TestHosts(REPO / ".testhosts" / "bench", prefix="bench", net=121)
    log("booting a bare test host")
    hosts.down()
    hosts.up()
    control_dir = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    host = None
    try:
        result, host = provisioning(hosts, control_dir, extra_vars=BENCH_VARS)
        # The load runs on bench1 alone: bench2 would take CPU from the same cores.
        hosts.run("down", f"{hosts.prefix}2")
        host.close()
        result.update(measure_host(args, host))
    finally:
        if host:
            host.close()
        if not args.keep:
            hosts.down()
    result.update(date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), seconds=args.seconds,
                  rounds=args.rounds, machine=machine())
    result["ratios"] = ratios(result)
    OUT.mkdir(exist_ok=True)
    (OUT / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    report = markdown(result)
    (OUT / "latest.md").write_text(report)
    chart(result, OUT / "latest.png")
    print(report)


if __name__ == "__main__":
    main()
