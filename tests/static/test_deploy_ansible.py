"""The playbooks and roles: ansible-lint (production profile), syntax checks, the input validation
that runs before anything changes, and the rule that every role variable is documented once."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy_static import ANSIBLE_DIR, DEPLOY, REPO, VENV_BIN, run

from support import stopped_by_the_checks as stopped_in_checks

PLAYBOOKS = ("site.yml", "deploy.yml", "rollback.yml", "postgres-backup.yml", "postgres-restore.yml")
INVENTORIES = ("production.example", "vagrant/hosts.ini")
ROLES = sorted(p.name for p in (ANSIBLE_DIR / "roles").iterdir() if p.is_dir())


def playbook(*args, cwd=ANSIBLE_DIR):
    return run(VENV_BIN / "ansible-playbook", *args, cwd=cwd)


def recap(output: str) -> dict[str, int]:
    """The numbers of the first host line of PLAY RECAP."""
    line = output[output.index("PLAY RECAP"):].splitlines()[1]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


def stopped_by_the_checks(output: str) -> bool:
    """The play failed in its inventory checks, before any task that connects to a host."""
    return "fatal:" in output and stopped_in_checks(re.findall(r"^TASK \[([^\]]*)\]", output, re.M))


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
        f"[scheduler]\nh1\n[redis]\nh1\n[all:vars]\napi_project_dir={REPO}\n")


def test_a_play_without_a_project_fails_naming_api_project_dir(tmp_path):
    """The kit's example app is for test hosts only: a real inventory must name its project."""
    inventory = write_inventory(
        tmp_path, "[api]\nh1 ansible_host=127.0.0.1 ansible_port=1 ansible_user=deploy nginx_server_name=h1.static.test\n")
    for play in ("site.yml", "deploy.yml"):
        result = playbook("-i", inventory, play)
        output = result.stdout + result.stderr
        assert result.returncode != 0 and stopped_by_the_checks(output), output
        assert "api_project_dir is not set" in output


def test_site_names_every_bad_variable_in_its_first_task_and_changes_nothing(unreachable_inventory):
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", "nginx_tls_mode=bogus",
                      "-e", "nginx_server_name=Not_A_Name", "-e", "api_keep_releases=1", "-e", "api_keepalive_seconds=1",
                      "-e", "redis_cache_maxmemory_policy=noeviction")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert stopped_by_the_checks(output)
    for variable in ("nginx_tls_mode", "nginx_server_name", "api_keep_releases", "api_keepalive_seconds",
                     "redis_cache_maxmemory_policy", "nginx_upstream_keepalive_timeout"):
        assert variable in output
    assert (recap(output)["changed"], recap(output)["unreachable"], recap(output)["failed"]) == (0, 0, 1)


def test_site_files_mode_needs_the_certificate_files(unreachable_inventory, tmp_path):
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", "nginx_tls_mode=files",
                      "-e", f"nginx_tls_cert_file={tmp_path}/missing.pem")
    output = result.stdout + result.stderr
    assert "TASK [shared : Validate the inventory]" in output and "Gather facts" not in output
    assert "nginx_tls_cert_file" in output and "nginx_tls_key_file" in output


def test_site_acme_mode_names_a_bad_server_and_a_missing_server_ca(unreachable_inventory, tmp_path):
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps({
        "nginx_tls_mode": "acme", "nginx_acme_email": "ops@example.org",
        "nginx_acme_server": "http://ca.internal/directory", "nginx_acme_server_ca": f"{tmp_path}/missing.pem"}))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and stopped_by_the_checks(output), output
    message = output[output.index("Fix these variables"):]
    assert "nginx_acme_server must be an https://" in message
    assert "nginx_acme_server_ca must name a CA certificate file" in message


def test_site_passes_validation_with_a_good_inventory(unreachable_inventory):
    result = playbook("-i", unreachable_inventory, "site.yml")
    output = result.stdout + result.stderr
    # Validation and the shared password pass; the play stops where it first needs the host.
    assert "TASK [Gather facts]" in output
    assert (recap(output)["changed"], recap(output)["unreachable"], recap(output)["failed"]) == (0, 1, 0)
    assert (unreachable_inventory.parent / "credentials" / "redis_password").is_file()


def test_site_names_every_bad_project_setting(unreachable_inventory, tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "pyproject.toml").write_text("[project]\nname = 'shop'\n")
    bad = {"api_project_dir": str(tmp_path / "project"), "api_asgi_app": "shop.web", "api_scheduler_jobs": "shop jobs",
           "api_health_path": "livez", "api_ready_path": "/ready now", "api_release_hooks": "make migrate"}
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps(bad))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and stopped_by_the_checks(output), output
    message = output[output.index("Fix these variables"):]
    for variable in bad:
        assert variable in message, variable
    # The project directory is named with what it lacks.
    assert "requirements.lock" in message and str(tmp_path / "project") in message


@pytest.mark.parametrize(("override", "message"), [
    ({"api_processes": {"Consumer": "python -m shop.consumer"}}, "api_processes must map names"),
    ({"api_processes": {"scheduler": "python -m shop.consumer"}}, "api_processes must map names"),
    ({"api_processes": {"consumer": " "}}, "api_processes must map names"),
    ({"api_processes": ["python -m shop.consumer"]}, "api_processes must map names"),
    ({"api_process_stop_timeout": 0}, "api_process_stop_timeout must be"),
    ({"api_long_requests": [{"path": "reports", "timeout": 20}]}, "api_long_requests must be a list"),
    ({"api_long_requests": [{"path": "/reports"}]}, "api_long_requests must be a list"),
    ({"api_long_requests": [{"path": "/r", "timeout": 9}, {"path": "/r", "timeout": 8}]}, "each path once"),
    ({"api_long_requests": [{"path": "/reports", "timeout": 300}]}, "at most api_graceful_timeout (30 s)"),
    ({"api_long_requests": [{"path": "/reports", "timeout": 20}],
      "nginx_costly_locations": [{"path": "/reports", "rate": "6r/m"}]}, "not both"),
])
def test_background_processes_and_long_requests_are_checked_first(unreachable_inventory, override, message):
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps(override))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and stopped_by_the_checks(output), output
    assert message in " ".join(output.split())


def test_background_processes_and_long_requests_pass_validation(unreachable_inventory):
    good = {"api_processes": {"consumer": "python -m shop.consumer", "bot-2": "shop-bot --quiet"},
            "api_long_requests": [{"path": "/reports", "timeout": 30}, {"path": "/export/", "timeout": "25"}]}
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps(good))
    output = result.stdout + result.stderr
    assert "TASK [Gather facts]" in output and recap(output)["failed"] == 0, output


@pytest.mark.parametrize("hooks", [["alembic upgrade head", 3], ["alembic upgrade head", " "], {"a": "b"}])
def test_release_hooks_must_be_a_list_of_commands(unreachable_inventory, hooks):
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps({"api_release_hooks": hooks}))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and stopped_by_the_checks(output), output
    assert "api_release_hooks must be a list" in output


def test_another_project_with_one_probe_route_passes_validation(unreachable_inventory, tmp_path):
    (tmp_path / "shop").mkdir()
    for name in ("pyproject.toml", "requirements.lock"):
        (tmp_path / "shop" / name).write_text("")
    good = {"api_project_dir": str(tmp_path / "shop"), "api_asgi_app": "shop.web:api", "api_scheduler_jobs": "",
            "api_health_path": "/healthz", "api_ready_path": "/healthz", "api_release_hooks": ["python -m shop.migrate"]}
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps(good))
    output = result.stdout + result.stderr
    assert "TASK [Gather facts]" in output and recap(output)["failed"] == 0, output


@pytest.fixture
def inventory_without_redis(tmp_path) -> Path:
    """An API host and no host in group redis."""
    return write_inventory(
        tmp_path / "no-redis",
        "[api]\nh1 ansible_host=127.0.0.1 ansible_port=1 ansible_user=deploy nginx_server_name=h1.static.test\n"
        f"[scheduler]\nh1\n[all:vars]\napi_project_dir={REPO}\n")


def test_a_scheduler_needs_a_redis_host(inventory_without_redis):
    result = playbook("-i", inventory_without_redis, "site.yml")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and stopped_by_the_checks(output), output
    assert "api_scheduler_jobs needs Redis" in output


def test_an_app_without_scheduler_deploys_without_redis(inventory_without_redis):
    result = playbook("-i", inventory_without_redis, "site.yml", "-e", '{"api_scheduler_jobs": ""}')
    output = result.stdout + result.stderr
    # Validation passes; no Redis password is settled or generated.
    assert "TASK [Gather facts]" in output, output
    assert (recap(output)["changed"], recap(output)["unreachable"], recap(output)["failed"]) == (0, 1, 0), output
    assert not (inventory_without_redis.parent / "credentials").exists()


def test_deploy_and_rollback_validate_first(unreachable_inventory):
    for name, bad in (("deploy.yml", "api_version=not a version"), ("rollback.yml", "api_keepalive_seconds=0")):
        result = playbook("-i", unreachable_inventory, name, "-e", f'{{"{bad.split("=")[0]}": "{bad.split("=")[1]}"}}')
        output = result.stdout + result.stderr
        assert result.returncode != 0 and stopped_by_the_checks(output), output
        assert bad.split("=")[0] in output


@pytest.mark.parametrize("override", [
    "api_drain_seconds=40",          # beyond the graceful timeout
    "api_keepalive_seconds=9",               # beyond the drain window derived before it was raised
    "nginx_upstream_keepalive_timeout=2",  # not below the workers' keep-alive
], ids=["drain", "keepalive", "nginx"])
def test_the_idle_timeouts_must_grow_from_nginx_to_the_graceful_timeout(unreachable_inventory, override):
    """nginx's upstream idle < API_KEEPALIVE < API_DRAIN_SECONDS < API_GRACEFUL_TIMEOUT, one check."""
    name, value = override.split("=")
    extra = {name: int(value)}
    if name == "api_keepalive_seconds":
        extra["api_drain_seconds"] = 6
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps(extra))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and stopped_by_the_checks(output), output
    assert "the idle timeouts must grow: nginx_upstream_keepalive_timeout" in output
    assert name in output


def role_variables(role: str) -> dict[str, Path]:
    """The variables a role defines in defaults/ and vars/, with the file of each."""
    found = {}
    for kind in ("defaults", "vars"):
        path = ANSIBLE_DIR / "roles" / role / kind / "main.yml"
        if path.exists():
            found.update({name: path for name in yaml.safe_load(path.read_text())})
    return found


@pytest.mark.parametrize("role", ROLES)
def test_every_role_variable_is_documented_and_named_after_its_role(role):
    """roles/shared keeps the prefix of the service each fact describes; every other role its own."""
    prefixes = tuple(f"{other}_" for other in ROLES) if role == "shared" else (f"{role}_",)
    for name, path in role_variables(role).items():
        assert name.startswith(prefixes), f"{name} ({path}) lacks the prefix {' or '.join(prefixes)}"
        lines = path.read_text().splitlines()
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
        assert lines[index - 1].startswith("# "), f"{name} ({path}) has no comment line above it"


def test_no_variable_is_defined_in_two_roles():
    seen: dict[str, str] = {}
    for role in ROLES:
        for name in role_variables(role):
            assert name not in seen, f"{name} is defined by {seen[name]} and {role}"
            seen[name] = role


def names_used(role: str) -> set[str]:
    """Every lower_case_name in the role's own files and the templates it renders."""
    names = set()
    folder = ANSIBLE_DIR / "roles" / role
    # templates/ may link to deploy/systemd or deploy/nginx, which rglob does not follow.
    for path in [*folder.rglob("*"), *(folder / "templates").resolve().rglob("*")]:
        if path.is_file() and path.suffix in (".yml", ".j2", ".py"):
            names |= set(re.findall(r"\b[a-z]+_[a-z0-9_]+\b", path.read_text()))
    return names


def names_defined(role: str) -> set[str]:
    """A role's variables: its defaults and vars, what its tasks register and set."""
    names = set(role_variables(role))
    for path in (ANSIBLE_DIR / "roles" / role / "tasks").glob("*.yml"):
        for task in yaml.safe_load(path.read_text()) or []:
            for step in [task, *task.get("block", []), *task.get("rescue", []), *task.get("always", [])]:
                names |= {step["register"]} if "register" in step else set()
                names |= set(step.get("ansible.builtin.set_fact", {}) or {})
    return names


@pytest.mark.parametrize("role", [role for role in ROLES if role != "shared"])
def test_a_role_reads_only_its_own_variables_and_the_shared_facts(role):
    """The role contract (CONTRIBUTING.md): no role reads what another role defines, registers or sets."""
    used = names_used(role)
    for other in ROLES:
        if other not in (role, "shared"):
            assert not used & names_defined(other), f"{role} reads {sorted(used & names_defined(other))} of {other}"


def test_variables_renamed_in_this_release_still_work_with_a_warning(unreachable_inventory):
    """An inventory that still says app_keep_releases (now api_keep_releases) is read, and told."""
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", '{"app_keep_releases": 1}')
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and stopped_by_the_checks(result.stdout + result.stderr), output
    assert "DEPRECATED: app_keep_releases is now api_keep_releases" in output
    assert "api_keep_releases must be an integer >= 2" in output
    renamed = yaml.safe_load((ANSIBLE_DIR / "roles" / "shared" / "vars" / "main.yml").read_text())["shared_renamed_variables"]
    defined = {name for role in ROLES for name in role_variables(role)}
    assert set(renamed.values()) <= defined and not set(renamed) & defined


def test_the_old_credentials_dir_still_places_the_generated_passwords(unreachable_inventory, tmp_path):
    """redis_credentials_dir became shared_credentials_dir (it holds the PostgreSQL password too)."""
    result = playbook("-i", unreachable_inventory, "site.yml", "-e", json.dumps({"redis_credentials_dir": str(tmp_path / "old")}))
    output = " ".join((result.stdout + result.stderr).split())
    assert "DEPRECATED: redis_credentials_dir is now shared_credentials_dir" in output
    assert (tmp_path / "old" / "redis_password").is_file(), output


def test_roles_reach_the_templates_only_through_their_templates_links():
    """deploy/systemd, deploy/nginx and deploy/postgres stay readable without Ansible; their roles see
    them as their own templates/ (a relative symlink), and nothing climbs out of a role instead."""
    roles = ANSIBLE_DIR / "roles"
    assert (roles / "api" / "templates").readlink() == Path("../../../systemd")
    assert (roles / "nginx" / "templates").readlink() == Path("../../../nginx")
    assert (roles / "postgres" / "templates").readlink() == Path("../../../postgres")
    assert (roles / "api" / "templates").resolve() == DEPLOY / "systemd"
    assert (roles / "nginx" / "templates").resolve() == DEPLOY / "nginx"
    reaches = subprocess.run(["git", "grep", "--untracked", "-n", "-F", "-e", "role_path }}/..", "--", "deploy"],
                             cwd=REPO, capture_output=True, text=True)
    assert reaches.stdout == ""


def test_only_the_api_role_defaults_name_the_example_app():
    """The kit deploys any project: its modules are named once, as the defaults of the seam."""
    found = subprocess.run(
        ["git", "grep", "--untracked", "-n", "-F", "-e", "app.main", "-e", "app.scheduler", "-e", "app.jobs",
         "-e", '"app"', "--", "deploy", "gunicorn.conf.py"],
        cwd=REPO, capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr
    files = {line.split(":", 1)[0] for line in found.stdout.splitlines()}
    assert files == {"deploy/ansible/roles/api/defaults/main.yml"}, found.stdout


@pytest.fixture
def several_hosts(tmp_path) -> Path:
    """An lb, two web hosts, Redis with a scheduler and a second scheduler (none reachable)."""
    return write_inventory(
        tmp_path / "several",
        f"[all:vars]\nansible_port=1\nansible_user=deploy\nnginx_server_name=several.static.test\napi_project_dir={REPO}\n"
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
        result = playbook("-i", several_hosts, name, "-e", '{"api_rollout_batch": "0"}')
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode != 0 and stopped_by_the_checks(result.stdout + result.stderr), output
        assert "api_rollout_batch must be" in output
        if name == "site.yml":
            assert "lb1 is in groups lb and api" in output
            assert "base_private_address (default: ansible_host) must be an IP address" in output
