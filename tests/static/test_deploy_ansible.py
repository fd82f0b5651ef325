"""The playbooks and roles: ansible-lint (production profile), syntax checks, the input validation
that runs before anything changes, and the rule that every role variable is documented once."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy_static import ANSIBLE_DIR, DEPLOY, REPO, VENV_BIN, run

PLAYBOOKS = ("site.yml", "deploy.yml", "rollback.yml")
INVENTORIES = ("production.example", "vagrant/hosts.ini")
ROLES = sorted(p.name for p in (ANSIBLE_DIR / "roles").iterdir() if p.is_dir())


def playbook(*args, cwd=ANSIBLE_DIR):
    return run(VENV_BIN / "ansible-playbook", *args, cwd=cwd)


def recap(output: str) -> dict[str, int]:
    """The numbers of the first host line of PLAY RECAP."""
    line = output[output.index("PLAY RECAP"):].splitlines()[1]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


def test_ansible_lint_production_profile_passes():
    result = run(VENV_BIN / "ansible-lint", "--profile", "production", cwd=ANSIBLE_DIR, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("inventory", INVENTORIES)
@pytest.mark.parametrize("name", PLAYBOOKS)
def test_playbook_syntax(name, inventory):
    result = playbook("--syntax-check", "-i", f"inventories/{inventory}", name)
    assert result.returncode == 0, result.stdout + result.stderr


def write_inventory(directory: Path, text: str) -> Path:
    """An inventory in a directory of its own: the credentials a play settles are written beside it."""
    directory.mkdir(exist_ok=True)
    inventory = directory / "inventory"
    inventory.write_text(text)
    return inventory


@pytest.fixture
def unreachable_inventory(tmp_path) -> Path:
    """One host in every group that nothing can connect to (the port is closed)."""
    return write_inventory(
        tmp_path,
        "[api]\nh1 ansible_host=127.0.0.1 ansible_port=1 ansible_user=deploy nginx_server_name=h1.static.test\n"
        f"[scheduler]\nh1\n[redis]\nh1\n[all:vars]\napp_project_dir={REPO}\n")


def test_a_play_without_a_project_fails_naming_app_project_dir(tmp_path):
    """The kit's example app is for test hosts only: a real inventory must name its project."""
    inventory = write_inventory(
        tmp_path, "[api]\nh1 ansible_host=127.0.0.1 ansible_port=1 ansible_user=deploy nginx_server_name=h1.static.test\n")
    for play in ("site.yml", "deploy.yml"):
        result = playbook("-i", inventory, play)
        output = result.stdout + result.stderr
        assert result.returncode != 0 and output.count("TASK [") == 1, output
        assert "app_project_dir is not set" in output


def test_site_names_every_bad_variable_in_its_first_task_and_changes_nothing(unreachable_inventory):
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", "nginx_tls_mode=bogus",
                      "-e", "nginx_server_name=Not_A_Name", "-e", "app_keep_releases=1", "-e", "app_keepalive=1",
                      "-e", "redis_cache_maxmemory_policy=noeviction")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count("TASK [") == 1 and "TASK [Validate the inventory]" in output
    for variable in ("nginx_tls_mode", "nginx_server_name", "app_keep_releases", "app_keepalive",
                     "redis_cache_maxmemory_policy", "nginx_upstream_keepalive_timeout"):
        assert variable in output
    assert recap(output) == {"ok": 0, "changed": 0, "unreachable": 0, "failed": 1,
                             "skipped": 0, "rescued": 0, "ignored": 0}


def test_site_files_mode_needs_the_certificate_files(unreachable_inventory, tmp_path):
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", "nginx_tls_mode=files",
                      "-e", f"nginx_tls_cert_file={tmp_path}/missing.pem")
    output = result.stdout + result.stderr
    assert "TASK [Validate the inventory]" in output and "Gather facts" not in output
    assert "nginx_tls_cert_file" in output and "nginx_tls_key_file" in output


def test_site_acme_mode_names_a_bad_server_and_a_missing_server_ca(unreachable_inventory, tmp_path):
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps({
        "nginx_tls_mode": "acme", "nginx_acme_email": "ops@example.org",
        "nginx_acme_server": "http://ca.internal/directory", "nginx_acme_server_ca": f"{tmp_path}/missing.pem"}))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and output.count("TASK [") == 1, output
    message = output[output.index("Fix these variables"):]
    assert "nginx_acme_server must be an https://" in message
    assert "nginx_acme_server_ca must name a CA certificate file" in message


def test_site_passes_validation_with_a_good_inventory(unreachable_inventory):
    result = playbook("-i", unreachable_inventory, "site.yml")
    output = result.stdout + result.stderr
    # Validation and the shared password pass; the play stops where it first needs the host.
    assert "TASK [Gather facts]" in output
    assert (recap(output)["ok"], recap(output)["unreachable"], recap(output)["failed"]) == (2, 1, 0)
    assert (unreachable_inventory.parent / "credentials" / "redis_password").is_file()


def test_site_names_every_bad_project_setting(unreachable_inventory, tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "pyproject.toml").write_text("[project]\nname = 'shop'\n")
    bad = {"app_project_dir": str(tmp_path / "project"), "app_asgi_app": "shop.web", "app_scheduler_jobs": "shop jobs",
           "app_health_path": "livez", "app_ready_path": "/ready now", "app_release_hooks": "make migrate"}
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps(bad))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and output.count("TASK [") == 1, output
    message = output[output.index("Fix these variables"):]
    for variable in bad:
        assert variable in message, variable
    # The project directory is named with what it lacks.
    assert "requirements.lock" in message and str(tmp_path / "project") in message


@pytest.mark.parametrize(("override", "message"), [
    ({"app_processes": {"Consumer": "python -m shop.consumer"}}, "app_processes must map names"),
    ({"app_processes": {"scheduler": "python -m shop.consumer"}}, "app_processes must map names"),
    ({"app_processes": {"consumer": " "}}, "app_processes must map names"),
    ({"app_processes": ["python -m shop.consumer"]}, "app_processes must map names"),
    ({"app_process_stop_timeout": 0}, "app_process_stop_timeout must be"),
    ({"app_long_requests": [{"path": "reports", "timeout": 20}]}, "app_long_requests must be a list"),
    ({"app_long_requests": [{"path": "/reports"}]}, "app_long_requests must be a list"),
    ({"app_long_requests": [{"path": "/r", "timeout": 9}, {"path": "/r", "timeout": 8}]}, "each path once"),
    ({"app_long_requests": [{"path": "/reports", "timeout": 300}]}, "at most app_graceful_timeout (30 s)"),
    ({"app_long_requests": [{"path": "/reports", "timeout": 20}],
      "nginx_costly_locations": [{"path": "/reports", "rate": "6r/m"}]}, "not both"),
])
def test_background_processes_and_long_requests_are_checked_first(unreachable_inventory, override, message):
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps(override))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and output.count("TASK [") == 1, output
    assert message in " ".join(output.split())


def test_background_processes_and_long_requests_pass_validation(unreachable_inventory):
    good = {"app_processes": {"consumer": "python -m shop.consumer", "bot-2": "shop-bot --quiet"},
            "app_long_requests": [{"path": "/reports", "timeout": 30}, {"path": "/export/", "timeout": "25"}]}
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps(good))
    output = result.stdout + result.stderr
    assert "TASK [Gather facts]" in output and recap(output)["failed"] == 0, output


@pytest.mark.parametrize("hooks", [["alembic upgrade head", 3], ["alembic upgrade head", " "], {"a": "b"}])
def test_release_hooks_must_be_a_list_of_commands(unreachable_inventory, hooks):
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps({"app_release_hooks": hooks}))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and output.count("TASK [") == 1, output
    assert "app_release_hooks must be a list" in output


def test_another_project_with_one_probe_route_passes_validation(unreachable_inventory, tmp_path):
    (tmp_path / "shop").mkdir()
    for name in ("pyproject.toml", "requirements.lock"):
        (tmp_path / "shop" / name).write_text("")
    good = {"app_project_dir": str(tmp_path / "shop"), "app_asgi_app": "shop.web:api", "app_scheduler_jobs": "",
            "app_health_path": "/healthz", "app_ready_path": "/healthz", "app_release_hooks": ["python -m shop.migrate"]}
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps(good))
    output = result.stdout + result.stderr
    assert "TASK [Gather facts]" in output and recap(output)["failed"] == 0, output


@pytest.fixture
def inventory_without_redis(tmp_path) -> Path:
    """An API host and no host in group redis."""
    return write_inventory(
        tmp_path / "no-redis",
        "[api]\nh1 ansible_host=127.0.0.1 ansible_port=1 ansible_user=deploy nginx_server_name=h1.static.test\n"
        f"[scheduler]\nh1\n[all:vars]\napp_project_dir={REPO}\n")


def test_a_scheduler_needs_a_redis_host(inventory_without_redis):
    result = playbook("-i", inventory_without_redis, "site.yml")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and output.count("TASK [") == 1, output
    assert "app_scheduler_jobs needs Redis" in output


def test_an_app_without_scheduler_deploys_without_redis(inventory_without_redis):
    result = playbook("-i", inventory_without_redis, "site.yml", "-e", '{"app_scheduler_jobs": ""}')
    output = result.stdout + result.stderr
    # Validation passes; no Redis password is settled or generated.
    assert "TASK [Gather facts]" in output, output
    assert (recap(output)["ok"], recap(output)["skipped"], recap(output)["unreachable"]) == (1, 1, 1), output
    assert not (inventory_without_redis.parent / "credentials").exists()


def test_deploy_and_rollback_validate_first(unreachable_inventory):
    for name, bad in (("deploy.yml", "app_version=not a version"), ("rollback.yml", "app_keepalive=0")):
        result = playbook("-i", unreachable_inventory, name, "-e", f'{{"{bad.split("=")[0]}": "{bad.split("=")[1]}"}}')
        output = result.stdout + result.stderr
        assert result.returncode != 0 and output.count("TASK [") == 1, output
        assert bad.split("=")[0] in output


@pytest.mark.parametrize("override", [
    "app_drain_seconds=40",          # beyond the graceful timeout
    "app_keepalive=9",               # beyond the drain window derived before it was raised
    "nginx_upstream_keepalive_timeout=2",  # not below the workers' keep-alive
], ids=["drain", "keepalive", "nginx"])
def test_the_idle_timeouts_must_grow_from_nginx_to_the_graceful_timeout(unreachable_inventory, override):
    """nginx's upstream idle < API_KEEPALIVE < API_DRAIN_SECONDS < API_GRACEFUL_TIMEOUT, one check."""
    name, value = override.split("=")
    extra = {name: int(value)}
    if name == "app_keepalive":
        extra["app_drain_seconds"] = 6
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps(extra))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and output.count("TASK [") == 1, output
    assert "the idle timeouts must grow: nginx_upstream_keepalive_timeout" in output
    assert name in output


@pytest.mark.parametrize("role", ROLES)
def test_every_role_variable_is_documented_in_defaults(role):
    defaults = ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml"
    lines = defaults.read_text().splitlines()
    names = list(yaml.safe_load(defaults.read_text()))
    for name in names:
        assert name.startswith(f"{role}_"), f"{name} lacks the {role}_ prefix"
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
        assert lines[index - 1].startswith("# "), f"{name} has no comment line above it"


def test_no_variable_is_defined_in_two_roles():
    seen: dict[str, str] = {}
    for role in ROLES:
        for name in yaml.safe_load((ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml").read_text()):
            assert name not in seen, f"{name} is defined by {seen[name]} and {role}"
            seen[name] = role
    # ... and nothing else defines role variables behind the defaults' back.
    assert not list((ANSIBLE_DIR / "roles").glob("*/vars/*"))


def test_roles_reach_the_templates_only_through_their_templates_links():
    """deploy/systemd and deploy/nginx stay readable without Ansible; the app and nginx roles see
    them as their own templates/ (a relative symlink), and nothing climbs out of a role instead."""
    roles = ANSIBLE_DIR / "roles"
    assert (roles / "app" / "templates").readlink() == Path("../../../systemd")
    assert (roles / "nginx" / "templates").readlink() == Path("../../../nginx")
    assert (roles / "app" / "templates").resolve() == DEPLOY / "systemd"
    assert (roles / "nginx" / "templates").resolve() == DEPLOY / "nginx"
    reaches = subprocess.run(["git", "grep", "--untracked", "-n", "-F", "-e", "role_path }}/..", "--", "deploy"],
                             cwd=REPO, capture_output=True, text=True)
    assert reaches.stdout == ""


def test_only_the_app_role_defaults_name_the_example_app():
    """The kit deploys any project: its modules are named once, as the defaults of the seam."""
    found = subprocess.run(
        ["git", "grep", "--untracked", "-n", "-F", "-e", "app.main", "-e", "app.scheduler", "-e", "app.jobs",
         "-e", '"app"', "--", "deploy", "gunicorn.conf.py"],
        cwd=REPO, capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr
    files = {line.split(":", 1)[0] for line in found.stdout.splitlines()}
    assert files == {"deploy/ansible/roles/app/defaults/main.yml"}, found.stdout


@pytest.fixture
def several_hosts(tmp_path) -> Path:
    """An lb, two web hosts, Redis with a scheduler and a second scheduler (none reachable)."""
    return write_inventory(
        tmp_path / "several",
        f"[all:vars]\nansible_port=1\nansible_user=deploy\nnginx_server_name=several.static.test\napp_project_dir={REPO}\n"
        + "".join(f"[{group}]\n" + "".join(f"{name} ansible_host=127.0.0.{i}\n" for name, i in hosts)
                  for group, hosts in (("lb", [("lb1", 2)]), ("api", [("web1", 3), ("web2", 4)]),
                                       ("redis", [("sched1", 5)]), ("scheduler", [("sched1", 5), ("sched2", 6)]))))


def test_several_hosts_pass_validation(several_hosts):
    result = playbook("-i", several_hosts, "site.yml")
    output = result.stdout + result.stderr
    assert "TASK [Gather facts]" in output and recap(output)["failed"] == 0, output


def test_several_hosts_name_every_bad_setting_first(several_hosts):
    text = several_hosts.read_text().replace("[api]\n", "[api]\nlb1\n").replace("127.0.0.6", "sched2.example.com")
    several_hosts.write_text(text)
    for name in ("site.yml", "deploy.yml"):
        result = playbook("-i", several_hosts, name, "-e", '{"app_rollout_batch": "0"}')
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode != 0 and output.count("TASK [") == 1, output
        assert "app_rollout_batch must be" in output
        if name == "site.yml":
            assert "lb1 is in groups lb and api" in output
            assert "base_private_address (default: ansible_host) must be an IP address" in output
