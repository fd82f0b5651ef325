"""The example app's own settings (the kit's are in vmkit.settings), read from the environment."""

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vmkit.settings import load


class AppSettings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default=[], description="comma-separated origins allowed to call the API from a browser"
    )
    scheduler_tick_seconds: float = Field(
        default=60, gt=0, description="interval of the example job"
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> AppSettings:
    return load(AppSettings)
