"""Where the views find the data plane (shared/dataplane.py): stored on the app once by
`create_app` (api/app.py), reached through the one accessor views call. It lives beside the factory,
not in it, because the factory imports the views: they import this module, which imports none of
them. Nothing else under api/ touches Flask's `app.extensions`."""

from __future__ import annotations

from flask import Flask, current_app

from shared.dataplane import DataPlane

_KEY = "clarion"


def attach(app: Flask, plane: DataPlane) -> None:
    """The factory's one write: `app`'s views use this data plane from now on."""
    app.extensions[_KEY] = plane


def data_plane() -> DataPlane:
    """The data plane of the app serving this request (or this app context)."""
    return current_app.extensions[_KEY]
