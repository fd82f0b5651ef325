"""What the app and the kit keep (issue #18), on the session's provisioned host: the state
directory and the sandbox every process of the app shares, Redis data that a cache flood cannot
evict, and a Redis backup that restores."""

import json
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
from api_host import ApiHost
from support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

STATE_DIR = "/var/lib/api"
# /proc/<pid>/status fields that say who a process is and what it may do.
IDENTITY = ("Uid", "Gid", "Umask", "NoNewPrivs", "Seccomp", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
PROC_STATUS = "grep -E '^(" + "|".join(IDENTITY) + "):' /proc/{pid}/status"


def status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines())


def test_state_directory_is_the_services_and_survives_a_restart(site):
    assert site.sh(f"stat -c '%U %G %a' {STATE_DIR}").stdout.split() == ["api", "api", "750"]
    main = site.unit("api.service", "MainPID")["MainPID"]
    environ = site.sh(f"tr '\\0' '\\n' < /proc/{main}/environ").stdout.splitlines()
    assert f"STATE_DIRECTORY={STATE_DIR}" in environ
    marker = f"kept-{secrets.token_hex(4)}"
    site.sh(f"api-exec sh -c 'echo {marker} > \"$STATE_DIRECTORY/{marker}\"'")
    site.sh("systemctl restart api")
    assert site.sh(f"api-exec cat {STATE_DIR}/{marker}").stdout.strip() == marker
    # The service user's umask: nothing the app writes is readable by others.
    assert site.sh(f"stat -c '%U %a' {STATE_DIR}/{marker}").stdout.split() == ["api", "600"]


def test_api_exec_runs_with_the_identity_and_sandbox_of_api(site):
    """What the kernel enforces on the running gunicorn master and on a command run through
    api-exec (as the release hooks are) is the same: user, umask, capabilities, seccomp."""
    main = site.unit("api.service", "MainPID")["MainPID"]
    service = status_fields(site.sh(PROC_STATUS.format(pid=main)).stdout)
    command = status_fields(site.sh("api-exec sh -c " + repr(PROC_STATUS.format(pid="self"))).stdout)
    assert command == service and service["Seccomp"].strip() == "2" and service["NoNewPrivs"].strip() == "1"
    assert site.sh("api-exec sh -c 'touch /srv/api/current/x'", check=False).returncode != 0


def redis_admin(site: ApiHost, port: int, *args: str) -> str:
    """redis-cli as the operators' admin user (password from the controller's credentials file)."""
    password = (site.inventory.parent / "credentials" / "redis_admin_password").read_text().strip()
    return site.sh(f"REDISCLI_AUTH={password} redis-cli --no-auth-warning --user admin -p {port} "
                   + " ".join(args)).stdout.strip()


def test_a_cache_flood_evicts_no_data_and_fails_no_request(site):
    """Twice the cache Redis's memory in cache writes: the cache evicts its own keys; the counters,
    an Idempotency-Key record and the scheduler's claims, all in the data Redis, stay."""
    tag = secrets.token_hex(3)
    with site.client() as client:
        def post(path: str, **kwargs):
            return client.post(path, extensions={"sni_hostname": site.server_name}, **kwargs)

        for _ in range(5):
            assert post(f"/counters/flood-{tag}").status_code == 200
        keyed = post(f"/counters/keyed-{tag}", headers={"idempotency-key": f"flood-{tag}"})
        assert keyed.json()["value"] == 1
    claims_before = set(site.redis("ZRANGE", "api:scheduler:runs:example", "0", "-1").split())
    assert claims_before, "the example job has run no time yet"

    value = "v" * 60_000
    maxmemory = int(redis_admin(site, 6380, "CONFIG", "GET", "maxmemory").split()[1])
    total = 2 * maxmemory + 4 * 1024 * 1024
    count = total // len(value) + 1

    def put(i: int) -> int:
        return site.request("PUT", f"/cache/flood-{tag}-{i}", json={"value": value}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(put, range(count)))
    print(f"cache flood: {count} PUTs of 60 KB ({count * len(value) // 2**20} MB), statuses {set(statuses)}")
    assert set(statuses) == {200}
    evicted = redis_admin(site, 6380, "INFO", "stats")
    assert int(evicted.split("evicted_keys:")[1].split()[0]) > 0, "the flood never filled the cache"

    assert site.redis("GET", f"api:counters:flood-{tag}") == "5"
    replay = site.request("POST", f"/counters/keyed-{tag}", headers={"idempotency-key": f"flood-{tag}"})
    assert replay.headers.get("idempotent-replayed") == "true" and replay.json()["value"] == 1
    assert site.redis("GET", f"api:counters:keyed-{tag}") == "1"
    claims_after = set(site.redis("ZRANGE", "api:scheduler:runs:example", "0", "-1").split())
    assert claims_before <= claims_after
    assert redis_admin(site, 6379, "CONFIG", "GET", "maxmemory-policy").split()[1] == "noeviction"
    assert site.get("/ready").status_code == 200


def test_redis_backup_and_restore_bring_back_every_counter(site, tmp_path):
    """The drill: write N counters, back up, wipe the data Redis, restore: all N are back, and
    the API is ready again by itself."""
    tag = secrets.token_hex(3)
    counters = {f"drill-{tag}-{i}": i % 4 + 1 for i in range(40)}
    with site.client() as client:
        for name, times in counters.items():
            for _ in range(times):
                assert client.post(f"/counters/{name}", extensions={"sni_hostname": site.server_name}).status_code == 200
    backups = tmp_path / "backups"
    run = site.playbook("redis-backup.yml", "-e", json.dumps({"redis_backup_dir": str(backups)}))
    assert run.returncode == 0, str(run)
    (backup,) = (backups / site.name).glob("redis-*.rdb")
    print(f"redis-backup.yml: {run.seconds:.0f} s, {backup.name} {backup.stat().st_size} bytes")

    # Everything the data Redis holds on disk and in memory goes.
    site.sh("systemctl stop redis-server && rm -rf /var/lib/redis/appendonlydir /var/lib/redis/dump.rdb "
            "&& systemctl start redis-server")
    assert site.redis("EXISTS", *(f"api:counters:{name}" for name in counters)) == "0"

    run = site.playbook("redis-restore.yml", "-e", json.dumps({"redis_backup_dir": str(backups)}))
    assert run.returncode == 0, str(run)
    print(f"redis-restore.yml: {run.seconds:.0f} s")
    values = site.redis("MGET", *(f"api:counters:{name}" for name in counters)).split()
    assert dict(zip(counters, map(int, values))) == counters
    # Restored into the AOF too: a restart brings back the same data.
    site.sh("systemctl restart redis-server")
    wait_until(lambda: site.redis("GET", f"api:counters:drill-{tag}-3") == str(counters[f"drill-{tag}-3"]), 20,
               "the data Redis to load its AOF")
    assert redis_admin(site, 6379, "CONFIG", "GET", "appendonly").split()[1] == "yes"
    wait_until(lambda: site.get("/ready").status_code == 200, 60, "the API to be ready after the restore")


def test_restore_without_a_backup_says_so(site, tmp_path):
    run = site.playbook("redis-restore.yml", "-e", json.dumps({"redis_backup_dir": str(tmp_path / "none")}))
    assert run.returncode != 0
    assert "No backup to restore" in " ".join(run.output.split()), str(run)
    assert site.get("/ready").status_code == 200
