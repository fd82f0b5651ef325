"""The kit's settings, read from the process environment (systemd's EnvironmentFile on the hosts).

Everything the server side needs (gunicorn, the probes, Redis, the scheduler) is here; an app's
own settings live in the app (see `load` below for the way it reads them). A bad value ends the
process at start with a message naming the variable.
"""

import os
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# `module:attribute`, as gunicorn, uvicorn and the scheduler import it.
IMPORT_PATH = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"
URL_PATH = r"^/[A-Za-z0-9/_.~-]*$"
# `host:port` of a metrics listener (an IPv6 address in brackets), or empty for none.
BIND_ADDRESS = r"^((\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5})?$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    # What to run
    asgi_app: str = Field(
        default="",
        pattern=f"({IMPORT_PATH})|^$",
        description="the ASGI app gunicorn serves, `module:attribute` (required by gunicorn.conf.py)",
    )
    scheduler_jobs: str = Field(
        default="",
        pattern=f"({IMPORT_PATH})|^$",
        description="the scheduler's job list, `module:attribute`; empty: no scheduler, "
        "and the readiness probe does not ask for its heartbeat",
    )
    health_path: str = Field(
        default="/health", pattern=URL_PATH, description="path of the liveness probe"
    )
    ready_path: str = Field(
        default="/ready", pattern=URL_PATH, description="path of the readiness probe"
    )
    api_env: Literal["development", "production"] = Field(
        default="development",
        description="`production` turns a fallback to asyncio/h11 into an error log line",
    )
    app_version: str = Field(
        default="",
        max_length=64,
        description="shown by the liveness probe; empty: the version of the app's distribution",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="`critical`, `error`, `warning`, `info` or `debug`"
    )
    api_max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="larger request bodies get 413 before the app reads them"
    )
    api_access_log: bool = Field(
        default=True,
        description="one JSON line per request from the app (the playbooks turn it off: nginx's "
        "access log has the same record, for less CPU)",
    )
    api_metrics_bind: str = Field(
        default="",
        pattern=BIND_ADDRESS,
        description="`host:port` of the private listener where the gunicorn master serves every "
        "worker's metrics (PROMETHEUS_MULTIPROC_DIR must name their directory); empty: no metrics",
    )

    # Redis
    redis_url: str = Field(
        default="",
        pattern=r"^((rediss?|unix)://.*)?$",
        description="the data Redis (never evicts), `redis://`, `rediss://` or `unix://` with the "
        "password; empty: no Redis",
    )
    redis_cache_url: str = Field(
        default="",
        pattern=r"^((rediss?|unix)://.*)?$",
        description="the cache Redis (evicts when full), as REDIS_URL; empty: caches go to REDIS_URL",
    )
    redis_socket_timeout: float = Field(
        default=2.0, gt=0, le=60, description="seconds; no Redis call waits longer"
    )
    redis_key_prefix: str = Field(
        default="api:",
        pattern=r"^[A-Za-z0-9_.:-]{1,32}$",
        description="prefix of every key the kit (and the example app) writes",
    )
    redis_max_connections: int = Field(
        default=32, ge=1, le=1024, description="Redis connections per process at most"
    )
    idempotency_ttl_seconds: int = Field(
        default=86400,
        ge=60,
        description="seconds an `Idempotency-Key` and its stored response are kept (needs Redis)",
    )

    # PostgreSQL
    database_url: str = Field(
        default="",
        pattern=r"^(postgres(ql)?://.*)?$",
        description="the PostgreSQL database, `postgresql://user:password@host:port/name`; "
        "empty: no database, and the readiness probe does not ask for one",
    )
    database_pool_size: int = Field(
        default=4, ge=1, le=1024, description="PostgreSQL connections per process at most"
    )
    database_timeout: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="seconds; connecting, waiting for a pooled connection and each command wait "
        "no longer, so a dead database gives a quick 503",
    )

    # Scheduler daemon
    scheduler_heartbeat_seconds: float = Field(
        default=5, gt=0, description="interval of the heartbeat the readiness probe reads"
    )
    scheduler_lease_ttl: float = Field(
        default=10, ge=1, description="seconds; a standby takes over within this after the leader dies"
    )
    scheduler_drain_timeout: float = Field(
        default=20, ge=0, description="seconds running jobs may take to finish on stop"
    )
    scheduler_metrics_bind: str = Field(
        default="",
        pattern=BIND_ADDRESS,
        description="`host:port` of the scheduler daemon's own metrics listener; empty: no metrics",
    )
    ready_heartbeat_max_age: float = Field(
        default=30, gt=0, description="seconds after which the readiness probe calls the heartbeat stale"
    )

    # gunicorn (read by gunicorn.conf.py)
    api_bind: str = Field(
        default="unix:/run/api/api.sock",
        description="gunicorn's address when systemd passes no socket",
    )
    api_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=64,
        description="gunicorn workers (default: the CPU count)",
    )
    api_timeout: int = Field(
        default=30, ge=1, description="seconds a worker may be silent before the master replaces it"
    )
    api_graceful_timeout: int = Field(
        default=30, ge=1, description="seconds workers get to finish requests on stop or reload"
    )
    api_keepalive: int = Field(
        default=2,
        ge=2,
        description="seconds an idle keep-alive connection stays open (above nginx's upstream "
        "idle timeout, so nginx closes idle connections first)",
    )
    api_drain_seconds: float = Field(
        default=3,
        gt=0,
        description="seconds a draining worker keeps an idle connection that has no keep-alive "
        "timer yet (above API_KEEPALIVE, below API_GRACEFUL_TIMEOUT)",
    )
    api_max_requests: int = Field(
        default=10000, ge=0, description="requests after which a worker is recycled (0: never)"
    )
    api_max_requests_jitter: int = Field(
        default=1000, ge=0, description="random extra requests so workers do not recycle together"
    )
    api_forwarded_allow_ips: str = Field(
        default="127.0.0.1", description="peers whose X-Forwarded-* headers are trusted"
    )
    api_control_socket: str = Field(
        default="", description="gunicorn's control socket for `gunicornc` (empty: off)"
    )
    api_backlog: int = Field(
        default=2048, ge=1, description="listen backlog when gunicorn binds itself"
    )

    @field_validator("log_level", "api_env", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _drain_fits_in_the_graceful_timeout(self) -> "Settings":
        # Idle connections close in this order; see vmkit.draining.
        if not self.api_keepalive < self.api_drain_seconds < self.api_graceful_timeout:
            raise ValueError(
                f"API_KEEPALIVE ({self.api_keepalive}) < API_DRAIN_SECONDS "
                f"({self.api_drain_seconds}) < API_GRACEFUL_TIMEOUT "
                f"({self.api_graceful_timeout}) must hold"
            )
        return self

    @model_validator(mode="after")
    def _version_of_the_app(self) -> "Settings":
        if not self.app_version:
            self.app_version = distribution_version(self.asgi_app or self.scheduler_jobs)
        return self


def distribution_version(import_path: str) -> str:
    """Version of the installed distribution that provides the module of `import_path`."""
    top_level = import_path.split(":", 1)[0].split(".", 1)[0]
    for name in packages_distributions().get(top_level, []):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "0+unknown"


# Values that may carry credentials are never echoed back in an error message.
_SECRET_FIELDS = {"redis_url", "redis_cache_url", "database_url"}

S = TypeVar("S", bound=BaseSettings)


def describe_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        if not item["loc"]:  # a rule across several variables; its message names them
            lines.append(f"invalid environment: {item['msg']}")
            continue
        field = str(item["loc"][0])
        shown = "<hidden>" if field in _SECRET_FIELDS else repr(item.get("input"))
        lines.append(f"invalid environment variable {field.upper()}={shown}: {item['msg']}")
    return "\n".join(lines)


def load(settings_class: type[S]) -> S:
    """Settings of `settings_class` from the environment; a bad value ends the process naming
    the variable. Apps read their own settings classes through this too."""
    try:
        return settings_class()
    except ValidationError as error:
        print(describe_errors(error), file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The kit's settings for this process."""
    return load(Settings)
