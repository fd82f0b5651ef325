"""The settings objects (the kit's and the example app's): defaults, environment overrides, and
start-up failure messages."""

import pytest

from app import settings as app_settings
from vmkit import settings as kit_settings
from vmkit.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in [*Settings.model_fields, *app_settings.AppSettings.model_fields]:
        monkeypatch.delenv(name.upper(), raising=False)
    for module in (kit_settings, app_settings):
        module.get_settings.cache_clear()
    yield
    for module in (kit_settings, app_settings):
        module.get_settings.cache_clear()


def test_defaults_match_the_contract():
    settings = Settings()
    assert settings.api_env == "development"
    assert settings.asgi_app == settings.scheduler_jobs == ""
    assert (settings.health_path, settings.ready_path) == ("/health", "/ready")
    assert settings.redis_url == ""  # no Redis unless the deployment has one
    assert settings.database_url == ""  # no database either
    assert (settings.database_pool_size, settings.database_timeout) == (4, 3.0)
    assert settings.api_bind == "unix:/run/api/api.sock"
    assert settings.api_graceful_timeout == 30
    assert settings.api_control_socket == ""
    assert settings.api_workers >= 1
    assert settings.api_max_body_bytes == 1024 * 1024
    assert settings.api_access_log is True
    assert app_settings.AppSettings().cors_origins == []


def test_the_version_defaults_to_the_distribution_that_provides_the_app(monkeypatch):
    monkeypatch.setenv("ASGI_APP", "app.main:app")
    assert Settings().app_version == "0.1.0"  # example-api's version in pyproject.toml
    monkeypatch.setenv("ASGI_APP", "not_installed_anywhere:app")
    assert Settings().app_version == "0+unknown"


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("API_ENV", "Production")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example.test, https://b.example.test,")
    monkeypatch.setenv("API_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("API_WORKERS", "7")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("APP_VERSION", "1.2.3+abc")
    monkeypatch.setenv("ASGI_APP", "shop.web:api")
    monkeypatch.setenv("READY_PATH", "/status/ready")
    monkeypatch.setenv("DATABASE_URL", "postgres://api:pw@db.example.test:5432/api")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "10")
    monkeypatch.setenv("DATABASE_TIMEOUT", "0.5")
    settings = kit_settings.get_settings()
    assert settings.api_env == "production"
    assert settings.api_workers == 7
    assert settings.log_level == "debug"
    assert settings.api_max_body_bytes == 4096
    assert settings.app_version == "1.2.3+abc"
    assert (settings.asgi_app, settings.ready_path) == ("shop.web:api", "/status/ready")
    assert settings.database_url == "postgres://api:pw@db.example.test:5432/api"
    assert (settings.database_pool_size, settings.database_timeout) == (10, 0.5)
    assert kit_settings.get_settings() is settings
    example = app_settings.get_settings()
    assert example.cors_origins == ["https://a.example.test", "https://b.example.test"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCHEDULER_TICK_SECONDS", "0"),
        ("API_WORKERS", "two"),
        ("API_ENV", "staging"),
        ("REDIS_SOCKET_TIMEOUT", "0"),
        ("API_MAX_BODY_BYTES", "10"),
        ("REDIS_KEY_PREFIX", "has space"),
        ("ASGI_APP", "app.main"),
        ("SCHEDULER_JOBS", "app/jobs.py"),
        ("READY_PATH", "ready"),
        ("DATABASE_POOL_SIZE", "0"),
        ("DATABASE_TIMEOUT", "0"),
        ("DATABASE_TIMEOUT", "61"),
    ],
)
def test_a_bad_value_exits_2_naming_the_variable(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        kit_settings.get_settings()
        app_settings.get_settings()
    assert exit_info.value.code == 2
    assert f"invalid environment variable {name}={value!r}" in capsys.readouterr().err


def test_the_idle_timeouts_must_be_ordered_for_the_drain(monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@cache.example.test:6379/0")
    monkeypatch.setenv("API_KEEPALIVE", "5")
    monkeypatch.setenv("API_DRAIN_SECONDS", "4")
    with pytest.raises(SystemExit):
        kit_settings.get_settings()
    err = capsys.readouterr().err
    assert "API_KEEPALIVE (5) < API_DRAIN_SECONDS (4.0) < API_GRACEFUL_TIMEOUT (30) must hold" in err
    assert "hunter2" not in err


@pytest.mark.parametrize(("name", "value"), [
    ("REDIS_URL", "http://:hunter2@cache.example.test:6379/0"),
    ("DATABASE_URL", "mysql://api:hunter2@db.example.test:3306/api"),
])
def test_a_bad_url_is_reported_without_its_password(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        kit_settings.get_settings()
    err = capsys.readouterr().err
    assert f"invalid environment variable {name}=<hidden>" in err
    assert "hunter2" not in err
