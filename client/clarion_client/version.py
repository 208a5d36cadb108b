"""Which Clarion API this client speaks, and the one check that the server speaks it too."""

from __future__ import annotations

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
            stacklevel=4,
        )
        return
    if served.split(".")[0] != API_VERSION.split(".")[0]:
        raise IncompatibleServer(
            f"{url} serves Clarion API {served}; this clarion-client ({__version__}) speaks API "
            f"{API_VERSION}: install the clarion-client that goes with the server"
        )
