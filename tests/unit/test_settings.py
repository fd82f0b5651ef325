"""The one settings object: defaults, environment overrides, and start-up failure messages."""

import pytest

from app.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name.upper(), raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults_match_the_contract():
    settings = Settings()
    assert settings.api_env == "development"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert (settings.gzip_min_size, settings.gzip_level) == (1024, 5)
    assert settings.cors_origins == []
    assert settings.api_bind == "unix:/run/api/api.sock"
    assert settings.api_graceful_timeout == 30
    assert settings.api_control_socket == ""
    assert settings.api_workers >= 1
    assert settings.app_version  # the package version


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("API_ENV", "Production")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example.test, https://b.example.test,")
    monkeypatch.setenv("GZIP_LEVEL", "9")
    monkeypatch.setenv("API_WORKERS", "7")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("APP_VERSION", "1.2.3+abc")
    settings = get_settings()
    assert settings.api_env == "production"
    assert settings.cors_origins == ["https://a.example.test", "https://b.example.test"]
    assert settings.gzip_level == 9
    assert settings.api_workers == 7
    assert settings.log_level == "debug"
    assert settings.app_version == "1.2.3+abc"
    assert get_settings() is settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GZIP_LEVEL", "0"),
        ("GZIP_MIN_SIZE", "-1"),
        ("API_WORKERS", "two"),
        ("API_ENV", "staging"),
        ("REDIS_SOCKET_TIMEOUT", "0"),
        ("API_MAX_BODY_BYTES", "10"),
        ("REDIS_KEY_PREFIX", "has space"),
    ],
)
def test_a_bad_value_exits_2_naming_the_variable(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        get_settings()
    assert exit_info.value.code == 2
    assert f"invalid environment variable {name}={value!r}" in capsys.readouterr().err


def test_a_bad_redis_url_is_reported_without_its_password(monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", "http://:hunter2@cache.example.test:6379/0")
    with pytest.raises(SystemExit):
        get_settings()
    err = capsys.readouterr().err
    assert "invalid environment variable REDIS_URL=<hidden>" in err
    assert "hunter2" not in err
