"""The rendered systemd units: `systemd-analyze verify`, the security exposure and the timeouts
that have to fit together. systemd is not PID 1 on the controller, so everything runs offline."""

import re
import shutil
from pathlib import Path

import pytest

from deploy_static import run, tool, unit_settings

UNITS = ("api.socket", "api.service", "api-scheduler.service", "api-consumer.service")
SERVICES = ("api.service", "api-scheduler.service", "api-consumer.service")
MAX_EXPOSURE = 2.0


def verify_root(tmp_path: Path, units: dict[str, str]) -> Path:
    """A file system root with systemd's own units, the units under test and the binaries they run.

    `verify` checks that every Exec*= binary exists, so stand-ins are put where the release's venv
    will be; /usr/bin/kill (ExecReload) is copied in.
    """
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy(tool("kill"), root / "usr/bin/kill")
    shutil.copy(tool("env"), root / "usr/bin/env")
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    venv_bin = root / "srv/api/current/venv/bin"
    venv_bin.mkdir(parents=True)
    for name in ("gunicorn", "python"):
        (venv_bin / name).write_text("#!/bin/sh\n")
        (venv_bin / name).chmod(0o755)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for name, text in units.items():
        (unit_dir / name).write_text(text)
    return root


def verify_problems(root: Path, names) -> str:
    """What `systemd-analyze verify` has to say; it exits 0 on mere warnings such as an unknown key,
    so any output at all counts as a problem."""
    result = run(tool("systemd-analyze"), "verify", f"--root={root}", "--man=no", "--generators=no",
                 *(f"/etc/systemd/system/{name}" for name in names))
    return (result.stdout + result.stderr).strip() or ("" if result.returncode == 0 else f"exit {result.returncode}")


def exposure(unit: Path) -> tuple[int, float]:
    """(exit status with the threshold, overall exposure) of `systemd-analyze security --offline`."""
    # --threshold is in tenths: exit non-zero above MAX_EXPOSURE.
    result = run(tool("systemd-analyze"), "security", "--offline=true", "--no-pager",
                 f"--threshold={int(MAX_EXPOSURE * 10)}", unit)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return result.returncode, float(match.group(1))


def test_units_pass_systemd_analyze_verify(rendered, tmp_path):
    root = verify_root(tmp_path, {name: rendered.text(f"units/{name}") for name in UNITS})
    assert verify_problems(root, UNITS) == ""


def test_verify_reports_a_broken_unit(rendered, tmp_path):
    broken = rendered.text("units/api.service").replace("KillMode=mixed", "KillMode=mixd")
    root = verify_root(tmp_path, {"api.socket": rendered.text("units/api.socket"), "api.service": broken})
    assert "kill mode" in verify_problems(root, ["api.service"])


@pytest.mark.parametrize("service", SERVICES)
def test_service_exposure_is_at_most_2(rendered, service):
    status, level = exposure(rendered.root / "units" / service)
    assert level <= MAX_EXPOSURE
    assert status == 0


def test_threshold_fails_an_unhardened_service(rendered, tmp_path):
    text = rendered.text("units/api.service")
    sandbox = text[text.index("NoNewPrivileges="):text.index("RestrictAddressFamilies=")]
    unhardened = tmp_path / "api.service"
    unhardened.write_text(text.replace(sandbox, ""))
    status, level = exposure(unhardened)
    assert level > MAX_EXPOSURE
    assert status != 0


def test_socket_is_held_by_systemd_for_nginx_only(rendered):
    socket = unit_settings(rendered.text("units/api.socket"))
    assert socket["ListenStream"] == ["/run/api/api.sock"]
    assert (socket["SocketUser"], socket["SocketGroup"], socket["SocketMode"]) == (["root"], ["www-data"], ["0660"])


def test_api_service_runs_gunicorn_of_the_current_release(rendered):
    unit = unit_settings(rendered.text("units/api.service"))
    assert unit["Requires"] == ["api.socket"] and "api.socket" in unit["After"][0].split()
    assert unit["Type"] == ["notify"]
    # The app to serve is ASGI_APP in api.env: the unit names no project module.
    assert unit["ExecStart"] == ["/srv/api/current/venv/bin/gunicorn --config /srv/api/current/gunicorn.conf.py"]
    assert unit["EnvironmentFile"] == ["/etc/api/api.env", "/srv/api/current/release.env"]
    assert unit["User"] == ["api"] and unit["Group"] == ["api"]
    assert unit["ExecReload"] == ["/bin/kill -s HUP $MAINPID"]
    assert unit["KillMode"] == ["mixed"] and unit["Restart"] == ["on-failure"]
    # The control socket lives in the unit's own runtime directory, not in api.socket's /run/api.
    assert unit["RuntimeDirectory"] == ["api-gunicorn"]
    assert unit["Environment"] == ["API_CONTROL_SOCKET=/run/api-gunicorn/gunicorn.ctl"]


def test_scheduler_service_runs_the_current_release_and_always_comes_back(rendered):
    unit = unit_settings(rendered.text("units/api-scheduler.service"))
    # The kit's daemon; the jobs it runs are SCHEDULER_JOBS in api.env.
    assert unit["ExecStart"] == ["/srv/api/current/venv/bin/python -m vmkit.scheduler"]
    # Its own Redis user comes from scheduler.env, after the settings both services share.
    assert unit["EnvironmentFile"] == ["/etc/api/api.env", "/srv/api/current/release.env",
                                       "/etc/api/scheduler.env"]
    assert unit["Restart"] == ["always"] and int(unit["RestartSec"][0]) <= 5


# What makes a unit a long-running service rather than a command: everything else of api.service
# is the sandbox the app runs in, which a release hook and api-exec must get line for line.
SERVICE_LIFECYCLE = {"Type", "NotifyAccess", "RuntimeDirectory", "RuntimeDirectoryMode", "Environment", "LimitNOFILE",
                     "ExecStart", "ExecReload", "KillMode", "TimeoutStopSec", "Restart", "RestartSec"}


def service_sandbox(unit_text: str) -> list[tuple[str, str]]:
    """The [Service] lines of a unit that are not about its process lifecycle, in order."""
    section = unit_text.split("[Service]", 1)[1].split("\n[", 1)[0]
    lines = [line.partition("=") for line in section.splitlines() if "=" in line and not line.startswith("#")]
    return [(key, value) for key, _, value in lines if key not in SERVICE_LIFECYCLE]


def exec_sandbox(script: str, release: str) -> list[tuple[str, str]]:
    """The properties api-exec gives systemd-run, for a command in `release`."""
    properties = re.findall(r'^ +--property="([^"]*)" \\$', script, re.M)
    return [tuple(p.replace("${release}", release).split("=", 1)) for p in properties]


def test_hooks_and_api_exec_run_in_the_sandbox_of_api_service(rendered):
    api = service_sandbox(rendered.text("units/api.service"))
    assert exec_sandbox(rendered.text("api-exec"), "/srv/api/current") == api
    assert ("StateDirectory", "api") in api and ("UMask", "0077") in api and ("User", "api") in api
    # The scheduler too, plus its own Redis user's settings, and every background process.
    assert service_sandbox(rendered.text("units/api-scheduler.service")) == [
        *api, ("EnvironmentFile", "/etc/api/scheduler.env")]
    assert service_sandbox(rendered.text("units/api-consumer.service")) == api


def test_a_background_process_runs_its_command_in_the_current_release(rendered):
    unit = unit_settings(rendered.text("units/api-consumer.service"))
    assert unit["ExecStart"] == ["/usr/bin/env python -m app.consumer"]
    assert unit["Environment"] == ["PATH=/srv/api/current/venv/bin:/usr/local/bin:/usr/bin:/bin"]
    assert unit["KillMode"] == ["mixed"] and unit["TimeoutStopSec"] == ["30"] and unit["Restart"] == ["always"]


def test_the_sandbox_comparison_catches_a_line_in_one_place_only(rendered):
    unit = rendered.text("units/api.service").replace("PrivateTmp=yes\n", "PrivateTmp=yes\nProtectHome=tmpfs\n")
    assert exec_sandbox(rendered.text("api-exec"), "/srv/api/current") != service_sandbox(unit)
