"""The one settings object, read from the process environment (systemd's EnvironmentFile)."""

import os
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _package_version() -> str:
    try:
        return version("api")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    # The service
    api_env: Literal["development", "production"] = "development"
    app_version: str = Field(default_factory=_package_version, min_length=1, max_length=64)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    cors_origins: Annotated[list[str], NoDecode] = []
    gzip_min_size: int = Field(default=1024, ge=0)
    gzip_level: int = Field(default=5, ge=1, le=9)

    # Redis
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^(rediss?|unix)://")
    redis_socket_timeout: float = Field(default=2.0, gt=0, le=60)
    redis_key_prefix: str = Field(default="api:", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    # Per process: an API worker never holds more Redis connections than this.
    redis_max_connections: int = Field(default=32, ge=1, le=1024)

    # Scheduler daemon
    scheduler_tick_seconds: float = Field(default=60, gt=0)
    scheduler_heartbeat_seconds: float = Field(default=5, gt=0)
    scheduler_lease_ttl: float = Field(default=10, ge=1)
    scheduler_drain_timeout: float = Field(default=20, ge=0)
    ready_heartbeat_max_age: float = Field(default=30, gt=0)

    # gunicorn (read by gunicorn.conf.py)
    api_bind: str = "unix:/run/api/api.sock"
    api_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=64)
    api_timeout: int = Field(default=30, ge=1)
    api_graceful_timeout: int = Field(default=30, ge=1)
    api_keepalive: int = Field(default=5, ge=1)
    api_max_requests: int = Field(default=10000, ge=0)
    api_max_requests_jitter: int = Field(default=1000, ge=0)
    api_forwarded_allow_ips: str = "127.0.0.1"
    api_control_socket: str = ""
    api_backlog: int = Field(default=2048, ge=1)
    # Larger request bodies get 413 before they are buffered (a cache value is at most 64 KiB).
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("log_level", "api_env", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


# Values that may carry credentials are never echoed back in an error message.
_SECRET_FIELDS = {"redis_url"}


def describe_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        shown = "<hidden>" if field in _SECRET_FIELDS else repr(item.get("input"))
        lines.append(f"invalid environment variable {field.upper()}={shown}: {item['msg']}")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for this process; a bad value ends the process naming the variable."""
    try:
        return Settings()
    except ValidationError as error:
        print(describe_errors(error), file=sys.stderr, flush=True)
        raise SystemExit(2) from None
