"""Which Clarion API this client speaks, and the one check that the server speaks it too."""

from __future__ import annotations

import sys
import warnings
from typing import Any

from clarion_client.errors import IncompatibleServer

__version__ = "0.1.0"  # the clarion-client distribution's own version (CHANGELOG.md)
# The server's HTTP API this client speaks: a server whose major number differs is refused.
API_VERSION = "1.0"


def check_api_version(url: str, ping: Any) -> None:
    """Refuse a server of another major API version (at once, before any call it would misread);
    warn once about a server that does not say its version (one older than the check)."""
    served = ping.get("api_version") if isinstance(ping, dict) else None
    if not isinstance(served, str):
        warnings.warn(
            f"{url} does not say which Clarion API it serves (a server older than clarion-client "
            f"{__version__}?); this client speaks API {API_VERSION}",
            stacklevel=_callers_level(),
        )
        return
    if served.split(".")[0] != API_VERSION.split(".")[0]:
        raise IncompatibleServer(
            f"{url} serves Clarion API {served}; this clarion-client ({__version__}) speaks API "
            f"{API_VERSION}: install the clarion-client that goes with the server"
        )


def _callers_level() -> int:
    """The stack level of the first frame outside clarion_client: a warning names the user's line."""
    level, frame = 1, sys._getframe(1)  # 1: the function that warns
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("clarion_client"):
        level, frame = level + 1, frame.f_back
    return level
