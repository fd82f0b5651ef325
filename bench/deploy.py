"""`make bench-deploy`: how long the playbooks take, on fresh test hosts of this machine.

    .venv/bin/python bench/deploy.py [--prefix bdeploy --net 124] [--keep]

Boots a bare test host (tools/testhost, PREFIX1 on 10.231.NET.0/24) and times, each run with
Ansible's profile_tasks callback: site.yml from bare to HTTPS, site.yml again (changed=0),
deploy.yml of a code-only change (a copy of the example app with one more line in app/main.py: a
new release, the same lock), then a second host (PREFIX2), site.yml over both and a rolling
deploy.yml of the next change over the two api hosts. Prints the rows and the ten slowest tasks
of each run and writes bench/out/deploy.{json,md}; `make bench` (bench/run.py) takes its
provisioning rows from here. Not a test: it asserts only that each run succeeded.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The e2e suite's drivers of tools/testhost and of a host: one way to boot, reach and provision.
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "e2e")]
from api_host import ApiHost, PlaybookRun  # noqa: E402
from e2e_support import TestHosts, project_copy  # noqa: E402

OUT = REPO / "bench" / "out"
SLOWEST = 10
BARE, AGAIN, DEPLOY, ROLLING = ("bare host to HTTPS (site.yml)", "site.yml again", "deploy.yml",
                                "rolling deploy.yml, 2 web hosts")
# The goals, in seconds (docs/performance.md).
GOALS = {BARE: 45, AGAIN: 15, DEPLOY: 15, ROLLING: 30}
# profile_tasks' summary line: "role : task name ------ 1.23s".
PROFILE_LINE = re.compile(r"^(.+?) -{3,} (\d+\.\d+)s$", re.M)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def checked(run: PlaybookRun) -> PlaybookRun:
    if run.returncode != 0:
        sys.exit(f"bench: playbook failed\n{run}")
    return run


def slowest(run: PlaybookRun) -> list[list]:
    """The slowest tasks of a run, as profile_tasks summed them at its end: [[task, seconds]]."""
    summary = run.output.rpartition("=" * 20)[2]
    return [[name.strip(), float(seconds)] for name, seconds in PROFILE_LINE.findall(summary)][:SLOWEST]


def code_change(work: Path, number: int) -> Path:
    """A copy of the project whose code differs from the last one and whose lock does not."""
    return project_copy(work / f"change{number}", f"BENCH_CHANGE = {number}  # make bench-deploy")


def timed(label: str, play) -> PlaybookRun:
    log(f"{label}: running")
    run = checked(play())
    log(f"{label}: {run.seconds:.1f} s")
    return run


def deploy_change(host: ApiHost, work: Path, number: int) -> PlaybookRun:
    version = f"{host.health()['version'].split('-bench')[0]}-bench{number}"
    return host.playbook("deploy.yml", "-e", f"api_project_dir={code_change(work, number)}",
                         "-e", f"api_version={version}")


def provisioning(hosts: TestHosts, control_dir: Path, extra_vars: dict | None = None) -> tuple[dict, ApiHost]:
    """The four runs, from a bare PREFIX1 (booted by the caller) to PREFIX1 and PREFIX2 serving a
    rolled-out release, with `extra_vars` on every playbook. Returns the result and PREFIX1's host
    (for more measurements on it)."""
    # Every playbook run prints its slowest tasks; the environment reaches ApiHost's ansible-playbook.
    os.environ.update(ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
                      PROFILE_TASKS_TASK_OUTPUT_LIMIT=str(SLOWEST))
    host = ApiHost.from_inventory(hosts.inventory, control_dir, extra_vars=extra_vars)
    work = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    try:
        runs = {name: timed(name, play) for name, play in (
            (BARE, lambda: host.playbook("site.yml")),
            (AGAIN, lambda: host.playbook("site.yml")),
            (DEPLOY, lambda: deploy_change(host, work, 1)))}
        log("a second web host: booting it, site.yml over both (not timed)")
        hosts.up(2)
        checked(host.playbook("site.yml"))
        runs[ROLLING] = timed(ROLLING, lambda: deploy_change(host, work, 2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "provisioning_seconds": {name: round(run.seconds, 1) for name, run in runs.items()},
        "site_yml_again_changed": sum(h.get("changed", 0) for h in runs[AGAIN].recap.values()),
        "slowest_tasks": {name: slowest(run) for name, run in runs.items()},
    }, host


def markdown(result: dict) -> str:
    """The rows against their goals, then the slowest tasks of each run."""
    lines = ["| provisioning | seconds | goal |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {value} | <= {GOALS[name]} |" for name, value in result["provisioning_seconds"].items()]
    lines.append(f"| (site.yml again: changed={result['site_yml_again_changed']}) | | |")
    for name, tasks in result["slowest_tasks"].items():
        lines += ["", f"| {SLOWEST} slowest tasks: {name} | seconds |", "| --- | ---: |"]
        lines += [f"| {task.replace('|', '/')} | {seconds:.2f} |" for task, seconds in tasks]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="how long the playbooks take on fresh test hosts")
    parser.add_argument("--prefix", default="bdeploy", help="test host names: PREFIX1, PREFIX2")
    parser.add_argument("--net", type=int, default=124, help="PREFIX1 on 10.231.NET.0/24, PREFIX2 on NET+1")
    parser.add_argument("--keep", action="store_true", help="leave the test hosts running")
    args = parser.parse_args()
    hosts = TestHosts(REPO / ".testhosts" / args.prefix, prefix=args.prefix, net=args.net)
    log("booting a bare test host")
    hosts.down()
    hosts.up()
    control_dir = Path(tempfile.mkdtemp(prefix=f"{args.prefix}-ssh-"))
    host = None
    try:
        result, host = provisioning(hosts, control_dir)
    finally:
        if host:
            host.close()
        shutil.rmtree(control_dir, ignore_errors=True)
        if not args.keep:
            hosts.down()
    result["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    OUT.mkdir(exist_ok=True)
    (OUT / "deploy.json").write_text(json.dumps(result, indent=1) + "\n")
    report = markdown(result)
    (OUT / "deploy.md").write_text(f"# make bench-deploy, {result['date']}\n\n{report}")
    print(report)


if __name__ == "__main__":
    main()
