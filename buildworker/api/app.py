"""The API tier's FastAPI application: public REST API, internal worker API, files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from buildworker import __version__
from buildworker.api import (
    background,
    files,
    groups,
    internal,
    public,
    secret_routes,
    ssh_internal,
    ssh_keys,
)
from buildworker.api import health as health_routes
from buildworker.api import metrics as api_metrics
from buildworker.api.body import MAX_BODY
from buildworker.api.crypto import SecretBox
from buildworker.api.errors import install_handlers
from buildworker.config import Config
from buildworker.db.engine import make_engine, make_sessionmaker
from buildworker.db.migrate import upgrade
from buildworker.web.mount import install as install_web

__all__ = ["create_app"]

log = structlog.get_logger()


def create_app(config: Config, *, migrate: bool = True) -> FastAPI:
    """Build the app for `config`; runs the migrations to head first unless `migrate=False`.

    Background threads (outbox publisher, lease reaper) start with the ASGI lifespan, so a
    TestClient used as a context manager runs them and a bare one does not.
    """
    engine = make_engine(config.database.url)
    if migrate:
        upgrade(config.database.url, engine=engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = background.start(app.state)
        log.info("api_started", origin=config.api.origin)
        try:
            yield
        finally:
            stop()
            engine.dispose()

    app = FastAPI(
        title="buildworker",
        version=__version__,
        description="A builds.sr.ht-compatible build farm: the legacy REST API of builds.sr.ht.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
        # Counted as the body streams, chunked or not; routes that take more say so.
        max_body_size=MAX_BODY,
    )
    app.state.config = config
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.store = config.store.path
    app.state.secret_box = SecretBox(config.api.secret_key)
    install_handlers(app)
    app.include_router(public.router)
    app.include_router(groups.router)
    app.include_router(secret_routes.router)
    app.include_router(internal.router)
    app.include_router(files.router)
    # Operations: /metrics (and request timing), /healthz, /readyz.
    api_metrics.install(app, cache_s=config.api.metrics_cache)
    health_routes.install(app.state)
    app.include_router(health_routes.router)
    app.include_router(ssh_keys.router)
    app.include_router(ssh_internal.router)
    install_web(app, config)  # the web pages: after the API, whose paths come first
    return app
