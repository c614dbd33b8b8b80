"""`buildworker api`: serve the REST API, the internal worker API, logs and artifacts."""

from __future__ import annotations

import argparse

import uvicorn

from buildworker.api.app import create_app
from buildworker.config import load_config
from buildworker.log import configure_logging

NAME = "api"
HELP = "run the API tier (REST API, internal worker API, logs and artifacts) under uvicorn"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default=None, help="HOST:PORT to listen on (default: [api] bind)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(json=config.log.format == "json", level=config.log.level)
    host, _, port = (args.bind or config.api.bind).rpartition(":")
    app = create_app(config)
    uvicorn.run(
        app,
        host=host.strip("[]"),
        port=int(port),
        log_config=None,  # our structlog handler already owns the root logger
        proxy_headers=True,
        server_header=False,
    )
    return 0
