"""Each view declares its OpenAPI operations where it is routed, and the document's paths are derived
from the app's routes: `paths(app, deployment)` walks the url map and asks each route's view for its
declaration. A route is in the document by being routed; one whose view declares no operation for a
method it serves, or names a path argument with no declared parameter, stops the app from being built
(`check_declared`, called by the app factory), so no route goes undocumented and no documented path
is served by nothing.

A small registry of our own rather than spectree or flask-openapi3: both derive a request body from one
pydantic model per route, while /invocations takes JSON, text, JSON Lines and CSV, its schemas change
with the deployment (limits, label names, the precisions served), and the KServe routes' parameters
are the served model's name and version. Here a declaration is a function of the deployment, and the
routes stay plain Flask.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask

from shared.settings import Settings

_METHODS = ("get", "post", "put", "patch", "delete")
_ATTRIBUTE = "openapi_operations"


@dataclass(frozen=True)
class Deployment:
    """What the document describes: the settings' limits, the model's label names and its name and
    version once loaded (None until then: any is documented), and the precisions served."""

    settings: Settings
    labels: tuple[str, ...] | None = None
    precisions: tuple[str, ...] = ("exact", "fast")
    model_name: str | None = None
    model_version: str | None = None

    @property
    def nli(self) -> bool:
        """An NLI model's labels (one whose name starts with "entail", as transformers finds it):
        zero-shot labels need one."""
        return self.labels is not None and any(label.lower().startswith("entail") for label in self.labels)


Operation = Callable[[Deployment], dict[str, Any]]


@dataclass(frozen=True)
class PathParameter:
    """A path argument's OpenAPI parameter, and what it changes in the operations of the paths that
    hold it (a model version's path: its 404 also means a version not served)."""

    build: Callable[[Deployment], dict[str, Any]]
    amend: Callable[[dict[str, Any]], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Declaration:
    operations: Mapping[str, Operation]
    parameters: Mapping[str, PathParameter]


class UndocumentedRoute(RuntimeError):
    """A route whose view declares no operation for one of its methods, or no parameter for one of
    its path's arguments."""


View = TypeVar("View", bound=Callable[..., Any])


def documented(*, parameters: Mapping[str, PathParameter] | None = None, **operations: Operation):
    """Declare a view's operations by lower-case method (`get=`, `post=`, `delete=`) and its path
    arguments' parameters by argument name."""
    unknown = set(operations) - set(_METHODS)
    if unknown:
        raise ValueError(f"not HTTP methods: {sorted(unknown)}")

    def declare(view: View) -> View:
        setattr(view, _ATTRIBUTE, Declaration(dict(operations), dict(parameters or {})))
        return view

    return declare


def paths(app: Flask, deployment: Deployment) -> dict[str, Any]:
    """The document's paths: one per route path (its methods merged), in the order they were routed."""
    found: dict[str, Any] = {}
    for rule, declaration, methods in _routes(app):
        arguments = _arguments(rule.rule)
        parameters = [declaration.parameters[name] for name in arguments]
        built = [parameter.build(deployment) for parameter in parameters]
        path = _path(rule.rule, {name: p["name"] for name, p in zip(arguments, built, strict=True)})
        item = found.setdefault(path, {"parameters": built} if built else {})
        for method in methods:
            operation = declaration.operations[method](deployment)
            for parameter in parameters:
                if parameter.amend is not None:
                    operation = parameter.amend(operation)
            item[method] = operation
    return found


def check_declared(app: Flask) -> None:
    """Every route's view declares an operation for each of its methods and a parameter for each of
    its path's arguments (UndocumentedRoute otherwise)."""
    list(_routes(app))  # walking the routes is the check: it raises at the first that falls short


def _routes(app: Flask):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":  # Flask's own: the page's assets
            continue
        declaration = getattr(app.view_functions[rule.endpoint], _ATTRIBUTE, None)
        methods = sorted(m.lower() for m in (rule.methods or ()) if m not in ("HEAD", "OPTIONS"))
        if declaration is None:
            raise UndocumentedRoute(f"{rule.rule} ({rule.endpoint}) declares no OpenAPI operation")
        missing = [m for m in methods if m not in declaration.operations]
        missing += [f"the parameter {a}" for a in _arguments(rule.rule) if a not in declaration.parameters]
        if missing:
            what = ", ".join(missing)
            raise UndocumentedRoute(f"{rule.rule} ({rule.endpoint}) declares nothing for {what}")
        yield rule, declaration, methods


_ARGUMENT = re.compile(r"<(?:[^:>]+:)?([^>]+)>")


def _arguments(rule: str) -> list[str]:
    return _ARGUMENT.findall(rule)


def _path(rule: str, names: Mapping[str, str]) -> str:
    """A Werkzeug rule as an OpenAPI path: `<v2_model:name>` becomes `{model_name}`, the parameter's
    own name."""
    return _ARGUMENT.sub(lambda m: "{" + names[m[1]] + "}", rule)
