"""The example ASGI application, `app.main:app` (ASGI_APP), served by the kit's gunicorn.conf.py."""

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from vmkit import database, probes
from vmkit.redis import install_unavailable_handler
from vmkit.settings import get_settings as kit_settings

from app import api, live, notes, tasks
from app.settings import AppSettings, get_settings


def create_app(settings: AppSettings) -> FastAPI:
    development = kit_settings().api_env == "development"
    app = FastAPI(
        title="api",
        version=kit_settings().app_version,
        # The interactive docs are a development aid, not part of the production surface.
        docs_url="/docs" if development else None,
        redoc_url=None,
        openapi_url="/openapi.json" if development else None,
    )
    app.include_router(probes.router)
    app.include_router(api.router)
    app.include_router(live.router)
    app.include_router(tasks.router)
    app.include_router(notes.router)
    install_unavailable_handler(app)
    database.install(app)

    # Compression is nginx's (C, and only for bodies worth it): no GZipMiddleware wrapping every
    # response here.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "PUT", "DELETE", "POST"],
            allow_headers=["Content-Type", "Idempotency-Key", "X-Request-ID"],
        )
    return app


app = create_app(get_settings())
