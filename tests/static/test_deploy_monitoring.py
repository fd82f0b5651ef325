"""The monitoring stack without a host: the alert rules under `promtool check rules` and their unit
tests (tests/monitoring/alerts.test.yml) under `promtool test rules`, the scrape configuration under
`promtool check config`, Alertmanager's under `amtool check-config`, and where the exporters and
the metrics listeners may be reached from (the firewall, the listen addresses)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy_static import REPO, VENV_BIN, WEBHOOK_URL, Rendered, peer_address, render, run, tool

from support import stopped_by_the_checks as stopped_in_checks

RULE_TESTS = REPO / "tests" / "monitoring" / "alerts.test.yml"
ALL_GROUPS = ("api", "scheduler", "redis", "postgres", "monitoring")
# Every alert docs/monitoring.md explains, and the issue asks for.
ALERTS = {"TargetDown", "HealthProbeFailed", "ApiErrorRate", "ApiLatencyHigh", "CertificateExpiring", "DiskFull",
          "RedisMemoryHigh", "SchedulerNoLeader", "SchedulerJobMissed", "BackupTooOld", "BackupMissing"}


@pytest.fixture(scope="module")
def everything(tmp_path_factory) -> Rendered:
    """One host in every group, the monitoring host included."""
    return render(tmp_path_factory.mktemp("monitoring"), groups=ALL_GROUPS)


@pytest.fixture(scope="module")
def web_and_monitor(tmp_path_factory) -> Rendered:
    """A web host (api, scheduler, redis, postgres) whose monitoring host is another one."""
    return render(tmp_path_factory.mktemp("web"), groups=("api", "scheduler", "redis", "postgres"),
                  peers={"mon1": ("monitoring",)})


def alert_names(rules: str) -> list[str]:
    return [rule["alert"] for group in yaml.safe_load(rules)["groups"] for rule in group["rules"] if "alert" in rule]


def test_the_rules_cover_every_alert_the_docs_explain(everything):
    assert set(alert_names(everything.text("monitoring/alerts.yml"))) == ALERTS
    docs = (REPO / "docs" / "monitoring.md").read_text()
    assert [name for name in sorted(ALERTS) if f"### {name}" not in docs] == []


def test_promtool_checks_the_rules(everything):
    result = run(tool("promtool"), "check", "rules", everything.root / "monitoring" / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names(everything.text('monitoring/alerts.yml')))} rules found" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass(everything, tmp_path):
    """Each alert has a case where it fires and one where it stays quiet, and promtool runs them all."""
    tests = yaml.safe_load(RULE_TESTS.read_text())
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert fired == ALERTS and quiet == ALERTS, (ALERTS - fired, ALERTS - quiet)
    shutil.copy(everything.root / "monitoring" / "alerts.yml", tmp_path / "alerts.yml")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run(tool("promtool"), "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr

    # Not vacuous: the same tests fail against rules whose TargetDown never fires.
    (tmp_path / "alerts.yml").write_text((tmp_path / "alerts.yml").read_text().replace("expr: up == 0", "expr: up == 2"))
    broken = run(tool("promtool"), "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert broken.returncode != 0 and "TargetDown" in broken.stdout + broken.stderr


def test_the_scrape_configuration_names_every_target_and_passes_promtool(everything, tmp_path):
    config = yaml.safe_load(everything.text("monitoring/prometheus.yml"))
    jobs = {job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
            for job in config["scrape_configs"]}
    assert jobs["node"] == ["localhost:9100"]
    assert jobs["nginx"] == ["localhost:9113"]
    assert jobs["api"] == ["localhost:9180"]
    assert jobs["scheduler"] == ["localhost:9181"]
    assert jobs["redis"] == ["localhost:9121", "localhost:9122"]
    assert jobs["postgres"] == ["localhost:9187"]
    assert jobs["site_health"] == ["https://localhost:443/health"]
    # Alertmanager and the blackbox exporter on loopback of the monitoring host.
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    rules = everything.root / "monitoring" / "alerts.yml"
    checked = tmp_path / "prometheus.yml"
    checked.write_text(everything.text("monitoring/prometheus.yml").replace("/etc/prometheus/rules/api-alerts.yml", str(rules)))
    result = run(tool("promtool"), "check", "config", checked)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_sends_firing_and_resolved_alerts_to_the_webhook(everything):
    config = yaml.safe_load(everything.text("monitoring/alertmanager.yml"))
    (receiver,) = config["receivers"]
    assert receiver["webhook_configs"] == [{"url": WEBHOOK_URL, "send_resolved": True}]
    result = run(tool("amtool"), "check-config", everything.root / "monitoring" / "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_alertmanager_and_blackbox_listen_on_loopback_with_the_retention(everything):
    assert "--storage.tsdb.retention.time=15d" in everything.text("default/prometheus")
    assert "--web.listen-address=127.0.0.1:9090" in everything.text("default/prometheus")
    assert "--web.listen-address=127.0.0.1:9093 --cluster.listen-address=" in everything.text("default/prometheus-alertmanager")
    assert "--web.listen-address=127.0.0.1:9115" in everything.text("default/prometheus-blackbox-exporter")


def test_exporters_and_metrics_listen_on_the_private_address_and_open_to_the_monitoring_host_only(web_and_monitor):
    private, monitor = "10.0.0.5", peer_address(0)
    for name, port in [("prometheus-node-exporter", 9100), ("prometheus-nginx-exporter", 9113),
                       ("prometheus-postgres-exporter", 9187)]:
        assert f"-web.listen-address={private}:{port}" in web_and_monitor.text(f"default/{name}"), name
    assert f'REDIS_EXPORTER_WEB_LISTEN_ADDRESS="{private}:9121"' in web_and_monitor.text("default/prometheus-redis-exporter")
    assert "REDIS_PASSWORD=" in web_and_monitor.text("default/prometheus-redis-exporter")
    service = web_and_monitor.text("units/api.service")
    assert f"Environment=API_METRICS_BIND={private}:9180" in service
    assert "Environment=PROMETHEUS_MULTIPROC_DIR=/run/api-gunicorn/metrics" in service
    assert "RuntimeDirectory=api-gunicorn/metrics" in service
    assert f'SCHEDULER_METRICS_BIND="{private}:9181"' in web_and_monitor.text("scheduler.env")
    # The nginx exporter's source: stub_status on loopback, in no public server.
    site = web_and_monitor.text("nginx/sites-enabled/api.conf")
    assert re.search(r"listen 127\.0\.0\.1:8081;\s+server_name _;", site)
    assert site.count("stub_status;") == 1
    # The firewall: every one of these ports from the monitoring host, and from nowhere else.
    nft = web_and_monitor.text("nftables.conf")
    (rule,) = [line.strip() for line in nft.splitlines() if "9100" in line and "saddr" in line]
    assert rule == f"ip saddr {{ {monitor} }} tcp dport {{ 9100, 9113, 9180, 9181, 9121, 9122, 9187 }} accept"
    assert "user monitoring on" in web_and_monitor.text("redis.conf")
    assert "local   postgres  prometheus     peer" in web_and_monitor.text("postgres/pg_hba.conf")


def test_without_a_monitoring_group_nothing_listens_for_metrics(rendered):
    """The kit's defaults (no group monitoring): no metrics listener, no stub_status, no port opened."""
    assert "API_METRICS_BIND" not in rendered.text("units/api.service")
    assert "SCHEDULER_METRICS_BIND" not in rendered.text("scheduler.env")
    assert "stub_status" not in rendered.text("nginx/sites-enabled/api.conf")
    assert "9100" not in rendered.text("nftables.conf")
    assert "user monitoring" not in rendered.text("redis.conf")


def test_a_bad_webhook_url_stops_the_play_in_its_checks_naming_the_variable(tmp_path):
    inventory = tmp_path / "inventory"
    inventory.write_text(
        "[api]\nh1 ansible_host=127.0.0.1 ansible_port=1 ansible_user=deploy nginx_server_name=h1.static.test\n"
        f"[scheduler]\nh1\n[redis]\nh1\n[monitoring]\nh1\n[all:vars]\napi_project_dir={REPO}\n")
    for value in ("", "ftp://example.test/hook", "http://"):
        result = subprocess.run(
            [VENV_BIN / "ansible-playbook", "-i", inventory, "site.yml", "-e", f"monitoring_webhook_url={value}",
             "-e", "monitoring_retention_time=forever"],
            cwd=REPO / "deploy" / "ansible", capture_output=True, text=True, timeout=300)
        output = result.stdout + result.stderr
        tasks = re.findall(r"^TASK \[([^\]]*)\]", output, re.M)
        assert result.returncode != 0 and stopped_in_checks(tasks), output
        assert "monitoring_webhook_url must be the http:// or https:// URL" in output
        assert "monitoring_retention_time" in output


def test_a_valid_monitoring_inventory_passes_the_checks(tmp_path):
    """The defaults and a good webhook pass: the play gets past its checks (to the closed port)."""
    inventory = tmp_path / "inventory"
    inventory.write_text(
        "[api]\nh1 ansible_host=127.0.0.1 ansible_port=1 ansible_user=deploy nginx_server_name=h1.static.test\n"
        f"[scheduler]\nh1\n[redis]\nh1\n[monitoring]\nh1\n[all:vars]\napi_project_dir={REPO}\n"
        f"monitoring_webhook_url={WEBHOOK_URL}\n")
    result = subprocess.run([VENV_BIN / "ansible-playbook", "-i", inventory, "site.yml"],
                            cwd=REPO / "deploy" / "ansible", capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert re.search(r"TASK \[shared : Validate the inventory\].*?\nok: \[h1\]", output, re.S), output
    assert "UNREACHABLE" in output
