"""The emulated HSM process: ``bkv hsm init`` and ``bkv hsm serve``.

One process = one emulated HSM (:mod:`bkv.hsm.node`) behind its HTTP front
(:mod:`bkv.hsm.http`), run the way every bkv server runs (:mod:`bkv.serving`).
The process holds the lock on its ``key_dir`` from the moment it opens the
device until it exits (:mod:`bkv.hsm.device`): a second ``serve`` on the same
config stops with :class:`~bkv.errors.DirectoryLockedError` before it opens the
sealing key, the NV counter or the state.
"""

from __future__ import annotations

from bkv.errors import BkvError, HsmFailedError, KeyNotFoundError
from bkv.hsm.config import HsmConfig
from bkv.hsm.http import build_app
from bkv.hsm.node import HsmNode, init_hsm, load_hsm
from bkv.hsm.pause import Pauser
from bkv.keystore.link_key import create_link_key, read_link_key
from bkv.serving.guard import stderr_log
from bkv.serving.server import serve as serve_app

LOG_NAME = "bkv hsm"


def initialize(config: HsmConfig) -> HsmNode:
    """``bkv hsm init``: the link key (kept if it exists), then :func:`init_hsm`.

    The link key comes first, and an existing valid one is kept, so that a
    re-run after a failed init, or a key the operator provisioned, works.
    The returned node holds the device open: close it.
    """
    try:
        read_link_key(config.link_key_file)
    except KeyNotFoundError:
        create_link_key(config.link_key_file)
    return init_hsm(config)


def serve(config: HsmConfig) -> None:
    """``bkv hsm serve``: run the HSM until SIGINT/SIGTERM; print the ready line once serving."""
    link_key = read_link_key(config.link_key_file)
    with load_hsm(config) as node:
        try:
            node.run_housekeeping()  # records left at their limit by a crash go first
        except (OSError, ValueError, BkvError) as exc:  # latched by the node; refuse to start
            raise HsmFailedError(f"housekeeping at start failed ({type(exc).__name__})") from None
        log = stderr_log(LOG_NAME)
        web = build_app(
            node,
            link_key,
            log=log,
            timeouts=config.timeouts,
            pause=Pauser(config.pause_at, config.state_dir),
        )
        version = node.app.version
        serve_app(
            web,
            config.listen,
            timeouts=config.timeouts,
            ready_line=lambda url: (
                f"{LOG_NAME}: fleet {config.fleet_id} version {version} listening on {url}"
            ),
            log=log,
        )
