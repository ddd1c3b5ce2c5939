"""Process adapter: run the host app the way every bkv server runs (:mod:`bkv.serving`)."""

from __future__ import annotations

from bkv.host.app import create_app
from bkv.host.config import HostConfig
from bkv.serving.guard import stderr_log
from bkv.serving.server import serve as serve_app

LOG_NAME = "bkv host"


def serve(config: HostConfig) -> None:
    """Run until SIGINT/SIGTERM; print the ready line once connections are accepted."""
    log = stderr_log(LOG_NAME)
    serve_app(
        create_app(config, log=log),
        config.listen,
        timeouts=config.timeouts,
        ready_line=lambda url: f"{LOG_NAME}: fleet {config.fleet_id} listening on {url}",
        log=log,
    )
