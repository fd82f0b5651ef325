"""Release hooks (api_release_hooks, roles/api/tasks/hooks.yml) run by ansible-playbook on this
machine through the real api-exec script (deploy/systemd/api-exec.j2, rendered by the play), with a
stand-in for systemd-run (systemd is not PID 1 here) that does what the transient unit would: both
EnvironmentFiles in order, the WorkingDirectory, the command, and its exit status. It records every
property it was given, so the tests see the whole sandbox too."""

import json
import os
import re
import sys
from pathlib import Path

import pytest

from deploy_static import ANSIBLE_DIR, VENV_BIN, run

FAKE_SYSTEMD_RUN = r'''#!/usr/bin/env python3
import json, os, shlex, subprocess, sys
args, props, setenv = sys.argv[1:], [], {}
while args[0].startswith("--"):
    arg = args.pop(0)
    if arg == "--":
        break
    if arg.startswith("--property="):
        props.append(arg.split("=", 1)[1].split("=", 1))
    elif arg.startswith("--setenv="):
        key, _, value = arg.split("=", 1)[1].partition("=")
        setenv[key] = value
    elif arg not in ("--wait", "--pipe", "--collect", "--quiet"):
        sys.exit(f"systemd-run stand-in: unexpected {arg}")
env = dict(setenv)
for key, value in props:
    if key == "EnvironmentFile":
        for line in open(value):
            if line.strip() and not line.startswith("#"):
                name, _, raw = line.rstrip("\n").partition("=")
                env[name] = shlex.split(raw)[0] if raw else ""
with open(os.environ["FAKE_SYSTEMD_RUN_LOG"], "a") as log:
    log.write(json.dumps({"properties": props, "setenv": setenv, "argv": args}) + "\n")
cwd = dict(props).get("WorkingDirectory")
sys.exit(subprocess.run(args, env=env, cwd=cwd).returncode)
'''

PLAY = """
- name: Run the release hooks of the api role
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - ROLES/shared/defaults/main.yml
    - ROLES/api/defaults/main.yml
    - ROLES/api/vars/main.yml
  tasks:
    - name: Install api-exec as site.yml does
      ansible.builtin.template:
        src: ROLES/api/templates/api-exec.j2
        dest: "{{ api_exec_path }}"
        mode: "0755"

    - name: Release hooks
      ansible.builtin.include_role:
        name: api
        tasks_from: hooks.yml
"""


class Host:
    """A directory laid out like a host: api_root with an old and a new release, and api.env."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.app_root = root / "srv"
        self.old = self.app_root / "releases" / "1.0.0-old"
        self.new = self.app_root / "releases" / "1.1.0-new"
        for release, version in ((self.old, "1.0.0"), (self.new, "1.1.0")):
            (release / "venv" / "bin").mkdir(parents=True)
            (release / "release.env").write_text(f"APP_VERSION={version}\nRELEASE_ID={release.name}\n")
        tool = self.new / "venv" / "bin" / "release-tool"
        tool.write_text("#!/bin/sh\necho \"release-tool of $RELEASE_ID\"\n")
        tool.chmod(0o755)
        self.env_file = root / "api.env"
        self.env_file.write_text('# Ansible managed\nAPP_VERSION="from api.env"\nSHOP_DB="postgresql://db/shop"\n')
        self.bin = root / "bin"
        self.bin.mkdir()
        (self.bin / "systemd-run").write_text(FAKE_SYSTEMD_RUN)
        (self.bin / "systemd-run").chmod(0o755)
        self.log = root / "systemd-run.log"
        (root / "play.yml").write_text(PLAY.replace("ROLES", str(ANSIBLE_DIR / "roles")))

    def current(self, release: Path | None) -> None:
        link = self.app_root / "current"
        link.unlink(missing_ok=True)
        if release:
            link.symlink_to(release)

    def deploy(self, hooks: list[str], always: bool = False):
        extra = {"api_root": str(self.app_root), "api_release_dir": str(self.new), "api_env_file": str(self.env_file),
                 "api_user": "shop", "api_group": "shopgrp", "api_release_hooks": hooks,
                 "api_exec_path": str(self.bin / "api-exec"), "api_hooks_always": always,
                 "ansible_python_interpreter": sys.executable}
        (self.root / "vars.json").write_text(json.dumps(extra))
        return run(VENV_BIN / "ansible-playbook", "-i", "localhost,", self.root / "play.yml",
                   "-e", f"@{self.root / 'vars.json'}",
                   env={"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "FAKE_SYSTEMD_RUN_LOG": str(self.log),
                        "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles")})

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


def recap(output: str) -> dict[str, int]:
    line = output[output.index("PLAY RECAP"):].splitlines()[1]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


@pytest.fixture
def host(tmp_path) -> Host:
    return Host(tmp_path)


def test_hooks_run_in_the_new_release_as_the_services_would(host):
    host.current(host.old)
    hooks = ["echo \"$APP_VERSION $RELEASE_ID $SHOP_DB $(pwd)\" > hook1.out",
             "release-tool > hook2.out; echo \"$PATH\" >> hook2.out"]
    # The new release directory stands in for a writable one here (on a host it is root's).
    result = host.deploy(hooks)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # api-exec installed, two hooks, and the stamp of their success.
    assert recap(output)["changed"] == 4, output
    # release.env comes after api.env, so the release's own APP_VERSION wins.
    assert (host.new / "hook1.out").read_text().split() == [
        "1.1.0", "1.1.0-new", "postgresql://db/shop", str(host.new)]
    tool, path = (host.new / "hook2.out").read_text().splitlines()
    assert tool == "release-tool of 1.1.0-new"
    assert path.split(":")[0] == str(host.new / "venv" / "bin")
    for call, hook in zip(host.calls(), hooks, strict=True):
        assert call["argv"] == ["/usr/bin/env", "/bin/sh", "-c", hook]
        properties = dict((key, value) for key, value in call["properties"] if key != "EnvironmentFile")
        assert {key: properties[key] for key in ("User", "Group", "WorkingDirectory", "StateDirectory", "UMask")} == {
            "User": "shop", "Group": "shopgrp", "WorkingDirectory": str(host.new), "StateDirectory": "api",
            "UMask": "0077"}
        assert [value for key, value in call["properties"] if key == "EnvironmentFile"] == [
            str(host.env_file), str(host.new / "release.env")]


def test_a_first_install_runs_the_hooks_too(host):
    host.current(None)
    result = host.deploy(["true"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(host.calls()) == 1


def test_site_runs_the_hooks_again_only_when_the_release_settings_or_hooks_changed(host):
    host.current(host.new)
    assert host.deploy(["touch ran"]).returncode == 0 and len(host.calls()) == 1
    # Nothing changed: a second run runs nothing and changes nothing.
    again = host.deploy(["touch ran"])
    assert again.returncode == 0 and recap(again.stdout)["changed"] == 0 and len(host.calls()) == 1
    # api.env changed (e.g. api_extra_env): the hooks run against the new settings.
    host.env_file.write_text(host.env_file.read_text() + 'FEATURE="on"\n')
    assert host.deploy(["touch ran"]).returncode == 0 and len(host.calls()) == 2
    # Another hook list.
    assert host.deploy(["touch ran", "true"]).returncode == 0 and len(host.calls()) == 4
    assert host.deploy(["touch ran", "true"]).returncode == 0 and len(host.calls()) == 4


def test_every_deploy_runs_the_hooks(host):
    host.current(host.new)
    for _ in range(2):
        assert host.deploy(["touch ran"], always=True).returncode == 0
    assert len(host.calls()) == 2


def test_a_failing_hook_stops_before_the_switch_and_says_why(host):
    host.current(host.old)
    result = host.deploy(["true", "echo 'migration 42 failed: no such table' >&2; exit 3", "touch third-ran"])
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert len(host.calls()) == 2 and not (host.new / "third-ran").exists()
    assert "Release hook \"echo 'migration 42 failed: no such table' >&2; exit 3\" failed" in output
    assert "with exit code 3" in output and "migration 42 failed: no such table" in output
    assert "1.0.0-old is still the active release" in output
    assert (host.app_root / "current").readlink() == host.old
    assert not (host.new / ".hooks-ran").exists()


def test_a_failing_first_hook_says_nothing_serves_yet(host):
    host.current(None)
    result = host.deploy(["exit 4"])
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "no release was active on this host before, so nothing serves there yet" in output, output
    assert "still the active release" not in output
