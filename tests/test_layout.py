"""The layout is the architecture: imports point one way. `shared/` imports nothing from `api/` or
`worker/`, no Flask or Celery, and its subpackages form layers that never import one above them."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

SHARED = REPO / "shared"
CLIENT = REPO / "client" / "clarion_client"  # the clarion-client distribution
# Lowest first. A module may import its own layer and the ones before it, never one after it.
LAYERS = [
    {"settings", "errors", "metrics", "kinds"},
    {"io", "storage"},
    {"runtime"},
    {"explanation"},
    {"analysis"},
    {"serving", "jobs", "render"},
    {"dataplane"},
    {"cli"},
]


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "shared":  # `from shared import metrics`
                found |= {f"shared.{alias.name}" for alias in node.names}
    return found


def part_of(module: str) -> str | None:
    """The shared/ subpackage (or foundation module) a module belongs to."""
    parts = module.split(".")
    return parts[1] if parts[0] == "shared" and len(parts) > 1 else None


def layer_of(part: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def shared_modules() -> list[Path]:
    return sorted(p for p in SHARED.rglob("*.py") if "__pycache__" not in p.parts)


def test_shared_imports_nothing_from_api_worker_flask_or_celery() -> None:
    for path in shared_modules():
        bad = {
            m for m in imports_of(path) if m.split(".")[0] in {"api", "worker", "flask", "celery", "gunicorn"}
        }
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_every_part_of_shared_has_a_layer() -> None:
    parts = {p.relative_to(SHARED).parts[0].removesuffix(".py") for p in shared_modules()} - {"__init__"}
    assert parts == set().union(*LAYERS)


def test_no_subpackage_imports_one_above_it() -> None:
    for path in shared_modules():
        own = path.relative_to(SHARED).parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for module in imports_of(path):
            other = part_of(module)
            if other is None or other == own:
                continue
            assert layer_of(other) <= layer_of(own), (
                f"{path.relative_to(REPO)} ({own}) imports {module} ({other})"
            )


def test_the_client_needs_only_the_standard_library_numpy_and_shap() -> None:
    """The client runs in a user's notebook: no torch, Flask, pydantic, nor any of Clarion but itself
    (tests/test_client_package.py installs its wheel where nothing else is)."""
    import sys

    allowed = set(sys.stdlib_module_names) | {"numpy", "shap", "clarion_client"}
    for path in sorted(CLIENT.rglob("*.py")):
        for module in imports_of(path):
            assert module.split(".")[0] in allowed, f"{path.relative_to(REPO)} imports {module}"


def test_importing_the_client_leaves_shap_unloaded() -> None:
    """shap is imported only to convert an explanation (it takes seconds), even where it is installed."""
    import subprocess
    import sys

    check = "import clarion_client, sys; assert 'shap' not in sys.modules, 'shap loaded'"
    subprocess.run([sys.executable, "-c", check], cwd=REPO, check=True)


def test_only_the_command_line_uses_the_client() -> None:
    """The API and the workers never call a Clarion server; `clarion explain --url` does."""
    for path in sorted(
        [*(REPO / "api").rglob("*.py"), *(REPO / "worker").rglob("*.py"), *SHARED.rglob("*.py")]
    ):
        uses = any(m.split(".")[0] == "clarion_client" for m in imports_of(path))
        assert not uses or path.is_relative_to(SHARED / "cli"), f"{path.relative_to(REPO)} imports the client"


def test_the_api_imports_nothing_from_the_worker() -> None:
    """The API publishes tasks by name with its own Celery app; the names and the configuration it
    shares with the workers are shared/jobs/broker.py's, so no module of api/ imports worker/."""
    for path in sorted((REPO / "api").rglob("*.py")):
        bad = {m for m in imports_of(path) if m.split(".")[0] == "worker"}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_only_the_app_context_module_touches_flask_extensions() -> None:
    """Views reach the data plane (shared/dataplane.py) through api/context.py's `data_plane()`,
    which the app factory fills once; no other module of api/ reads `current_app.extensions` (or any
    app's `extensions`), so what a view depends on is one typed object, not a string key."""
    owner = REPO / "api" / "context.py"
    for path in sorted((REPO / "api").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        reads = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "extensions"]
        assert path == owner or not reads, f"{path.relative_to(REPO)} reads app.extensions"
