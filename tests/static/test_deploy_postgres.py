"""PostgreSQL (roles/postgres, deploy/postgres): who pg_hba.conf lets in, the firewall around
5432, the tuning derived from the host, DATABASE_URL, the sandbox's exposure, and the checks that
stop a play before it connects (the pool arithmetic, the restore target)."""

import json
import re
from pathlib import Path

import pytest

from deploy_static import POSTGRES_PASSWORD, env_file, peer_address, render, run, tool
from test_deploy_ansible import playbook, stopped_by_the_checks, unreachable_inventory  # noqa: F401 (a fixture)
from test_deploy_host_config import nft_check

DEBIAN_UNIT = Path("/lib/systemd/system/postgresql@.service")


def settings(text: str) -> dict[str, str]:
    """name = 'value' lines of the kit's conf.d file."""
    return {name: value.replace("''", "'") for name, value in re.findall(r"^(\w+) = '(.*)'$", text, re.M)}


def hba_rules(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def one_box(tmp_path_factory):
    """api, scheduler, redis and postgres on one host (the default render)."""
    return render(tmp_path_factory.mktemp("one-box"), groups=("api", "scheduler", "redis", "postgres"))


@pytest.fixture(scope="module")
def db_host(tmp_path_factory):
    """The postgres host of a deployment with two web hosts and a scheduler host."""
    return render(tmp_path_factory.mktemp("db-host"), groups=("postgres",),
                  peers={"web1": ("api",), "web2": ("api",), "sched1": ("scheduler", "redis"), "lb1": ("lb",)})


def test_one_box_listens_on_loopback_and_lets_the_app_in_from_there_only(one_box):
    conf = settings(one_box.text("postgres/kit.conf"))
    assert conf["listen_addresses"] == "127.0.0.1"
    assert conf["password_encryption"] == "scram-sha-256"
    assert hba_rules(one_box.text("postgres/pg_hba.conf")) == [
        ["local", "all", "postgres", "peer"], ["host", "api", "api", "127.0.0.1/32", "scram-sha-256"]]
    assert env_file(one_box.text("api.env"))["DATABASE_URL"] == f"postgresql://api:{POSTGRES_PASSWORD}@127.0.0.1:5432/api"
    assert env_file(one_box.text("api.env"))["DATABASE_POOL_SIZE"] == "4"
    # Nothing to open: the app is on the same host.
    assert "5432" not in one_box.text("nftables.conf")


def test_db_host_lets_in_exactly_the_web_and_scheduler_hosts(db_host):
    web_and_scheduler = [peer_address(i) for i in range(3)]
    assert settings(db_host.text("postgres/kit.conf"))["listen_addresses"] == "10.0.0.5"
    assert hba_rules(db_host.text("postgres/pg_hba.conf")) == [["local", "all", "postgres", "peer"]] + [
        ["host", "api", "api", f"{address}/32", "scram-sha-256"] for address in web_and_scheduler]
    rules = db_host.text("nftables.conf")
    assert nft_check(db_host.root / "nftables.conf") == ""
    assert re.findall(r"^\s*(.*dport \{ 5432 \}.*)$", rules, re.M) == [
        f"ip saddr {{ {', '.join(web_and_scheduler)} }} tcp dport {{ 5432 }} accept"]


def test_web_host_reaches_the_db_host_at_its_private_address_and_opens_nothing(tmp_path):
    out = render(tmp_path, groups=("api",), peers={"db1": ("postgres",), "sched1": ("scheduler", "redis")})
    url = env_file(out.text("api.env"))["DATABASE_URL"]
    assert url == f"postgresql://api:{POSTGRES_PASSWORD}@{peer_address(0)}:5432/api"
    assert "5432" not in out.text("nftables.conf")


def test_without_a_postgres_host_database_url_is_empty(tmp_path):
    out = render(tmp_path, groups=("api", "scheduler", "redis"))
    assert env_file(out.text("api.env"))["DATABASE_URL"] == ""


@pytest.mark.parametrize(("memory_mb", "vcpus", "expected"), [
    # 2 workers + 1 scheduler, pool 4, +1 hook: 13 connections, + 10 reserved = 23.
    (2048, 2, {"max_connections": "23", "shared_buffers": "524288kB", "effective_cache_size": "1572864kB",
               "maintenance_work_mem": "131072kB", "work_mem": f"{(2048 - 512) * 1024 // 69}kB", "wal_buffers": "15728kB",
               "max_worker_processes": "2", "max_parallel_workers_per_gather": "1"}),
    (16384, 8, {"max_connections": "23", "shared_buffers": "4194304kB", "effective_cache_size": "12582912kB",
                "maintenance_work_mem": "1048576kB", "work_mem": f"{(16384 - 4096) * 1024 // 69}kB", "wal_buffers": "16384kB",
                "max_worker_processes": "8", "max_parallel_workers_per_gather": "4"}),
    # maintenance_work_mem stops at 2 GB.
    (65536, 16, {"maintenance_work_mem": "2097152kB", "wal_buffers": "16384kB"}),
])
def test_tuning_follows_the_hosts_memory_and_vcpus(tmp_path, memory_mb, vcpus, expected):
    out = render(tmp_path, groups=("api", "scheduler", "postgres"), postgres_memory_mb=memory_mb, postgres_vcpus=vcpus)
    conf = settings(out.text("postgres/kit.conf"))
    assert {name: conf[name] for name in expected} == expected
    assert (conf["min_wal_size"], conf["max_wal_size"], conf["checkpoint_completion_target"]) == ("1GB", "4GB", "0.9")
    assert (conf["random_page_cost"], conf["effective_io_concurrency"], conf["jit"]) == ("1.1", "200", "off")


def test_settings_override_the_tuning_and_pools_raise_max_connections(tmp_path):
    out = render(tmp_path, groups=("api", "scheduler", "postgres"), api_workers=6, api_database_pool_size=10,
                 postgres_settings={"work_mem": "32MB", "log_min_duration_statement": "500ms"})
    conf = settings(out.text("postgres/kit.conf"))
    assert (conf["work_mem"], conf["log_min_duration_statement"]) == ("32MB", "500ms")
    # (6 workers + 1 scheduler) x 10 + 1 hook + 10 reserved.
    assert conf["max_connections"] == "81"


def test_wal_is_archived_for_point_in_time_recovery(one_box):
    conf = settings(one_box.text("postgres/kit.conf"))
    assert (conf["archive_mode"], conf["wal_level"]) == ("on", "replica")
    assert conf["archive_command"] == "pgbackrest --stanza=main archive-push %p"
    assert int(conf["max_wal_senders"]) > 0
    backrest = one_box.text("postgres/pgbackrest.conf")
    assert "repo1-path=/var/lib/pgbackrest" in backrest and "repo1-host" not in backrest
    timer = one_box.text("units/pgbackrest-backup@full.timer")
    assert "OnCalendar=Sun *-*-* 01:30:00" in timer and "Persistent=true" in timer
    assert "ExecStart=/usr/bin/pgbackrest --stanza=main --type=%i backup" in one_box.text("units/pgbackrest-backup@.service")


def test_a_backup_host_holds_the_repository_and_reaches_the_database_over_ssh(tmp_path):
    db = render(tmp_path / "db", groups=("api", "scheduler", "postgres"), peers={"bk1": ("backup",)})
    assert "repo1-host=10.0.0.11" in db.text("postgres/pgbackrest.conf")
    assert "repo1-path" not in db.text("postgres/pgbackrest.conf")
    assert "/var/lib/pgbackrest" not in db.text("units/postgresql-sandbox.conf")
    repo = render(tmp_path / "bk", groups=("backup",), peers={"db1": ("api", "scheduler", "postgres")},
                  base_ssh_admin_networks=["198.51.100.0/24"])
    text = repo.text("postgres/pgbackrest.conf")
    assert "repo1-path=/var/lib/pgbackrest" in text and "pg1-host=10.0.0.11" in text and "pg1-host-user=postgres" in text
    # SSH is limited to the admin networks, and open to the database host for pgBackRest.
    assert "ip saddr { 10.0.0.11 } tcp dport { 22 } accept" in repo.text("nftables.conf")


def test_the_sandbox_of_postgresql_lowers_its_exposure(one_box, tmp_path):
    """Debian's unit with the drop-in's lines, rated offline (the test hosts rate the real one)."""
    if not DEBIAN_UNIT.exists():
        pytest.skip("Debian's postgresql-common is not installed")
    unit = tmp_path / "postgresql@15-main.service"
    drop_in = one_box.text("units/postgresql-sandbox.conf")
    unit.write_text(DEBIAN_UNIT.read_text().replace("[Install]", drop_in[drop_in.index("[Service]") + 10:] + "\n[Install]"))
    result = run(tool("systemd-analyze"), "security", "--offline=true", "--no-pager", unit)
    level = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr).group(1))
    assert level <= 2.0, result.stdout


@pytest.fixture
def postgres_inventory(unreachable_inventory) -> Path:
    """The one-box inventory nothing can connect to, its host in group postgres too."""
    unreachable_inventory.write_text(unreachable_inventory.read_text().replace("[all:vars]", "[postgres]\nh1\n[all:vars]"))
    return unreachable_inventory


def test_max_connections_below_the_pools_stops_the_play_naming_the_variables(postgres_inventory):
    result = playbook("-i", postgres_inventory, "site.yml", "-e", json.dumps({"postgres_max_connections": 20,
                                                                             "api_workers": 4}))
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and stopped_by_the_checks(result.stdout + result.stderr), output
    # (4 workers + 1 scheduler) x 4 + 1 = 21 connections, + 3 for superusers.
    assert "postgres_max_connections (20) must be at least 24" in output
    for variable in ("api_workers", "api_database_pool_size"):
        assert variable in output[output.index("postgres_max_connections (20)"):]


def test_a_good_inventory_with_postgres_passes_and_settles_its_password(postgres_inventory):
    result = playbook("-i", postgres_inventory, "site.yml")
    output = result.stdout + result.stderr
    assert "TASK [Gather facts]" in output and "failed=0" in output, output
    assert (postgres_inventory.parent / "credentials" / "postgres_password").is_file()


@pytest.mark.parametrize("target", ["yesterday", "2026-12-07 21:30:00", "2026-12-07T21:30+00"])
def test_restore_refuses_a_target_that_is_not_a_time_with_its_offset(postgres_inventory, target):
    result = playbook("-i", postgres_inventory, "postgres-restore.yml", "-e", json.dumps({"postgres_restore_target": target}))
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and stopped_by_the_checks(result.stdout + result.stderr), output
    assert f'postgres_restore_target must be latest or a time with its UTC offset such as "2026-12-07 21:30:00+00", got "{target}"' in output


def test_settings_may_not_replace_what_the_kit_owns(postgres_inventory):
    result = playbook("-i", postgres_inventory, "site.yml", "-e", json.dumps({"postgres_settings": {"listen_addresses": "*"}}))
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and stopped_by_the_checks(result.stdout + result.stderr), output
    assert "postgres_settings may not set listen_addresses" in output
