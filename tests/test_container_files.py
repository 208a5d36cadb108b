"""The container files: lint the Dockerfiles, validate the compose file, and check the promises they make.

No Docker engine is needed: hadolint and docker-compose (from the dev requirements) read the files, and
the install script the images run is run here against the test interpreter.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile.api", "Dockerfile.worker", "Dockerfile.sagemaker"]
CODE_DIRS = ("api/", "shared/", "worker/", "client/")


def _tool(name: str) -> str:
    """The tool installed beside this interpreter (the project's venv), else the one on PATH; skip if none."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes with requirements/dev.txt)")
    return found


def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction of a Dockerfile: comments dropped, lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def _exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT (JSON is YAML, and PyYAML is a runtime dependency)."""
    yaml = pytest.importorskip("yaml")
    assert arguments.startswith("["), f"not exec form: {arguments}"
    value = yaml.safe_load(arguments)
    assert isinstance(value, list), arguments
    assert all(isinstance(item, str) for item in value), arguments
    return value


def _last(instructions: list[tuple[str, str]], keyword: str) -> str | None:
    values = [arguments for name, arguments in instructions if name == keyword]
    return values[-1] if values else None


def _env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in instructions:
        if name == "ENV":
            for pair in arguments.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    hadolint = _tool("hadolint")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "error", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_pinned_dependencies_before_the_code(name: str) -> None:
    text = (ROOT / name).read_text()
    steps = _instructions(name)
    assert "requirements/dev.txt" not in text and "--dev" not in text, "images never get dev dependencies"

    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    assert ("FROM", "${BASE_IMAGE}") in steps
    assert ("ARG", "TORCH=torch==2.13.0") in steps

    copies = [i for i, (keyword, _) in enumerate(steps) if keyword == "COPY"]
    requirements_copy = next(i for i in copies if steps[i][1].startswith("requirements/"))
    code_copies = [i for i in copies if steps[i][1].startswith(CODE_DIRS)]
    dependency_install = next(
        i for i, (keyword, arguments) in enumerate(steps) if keyword == "RUN" and "--no-project" in arguments
    )
    assert len(code_copies) == len(CODE_DIRS)
    assert requirements_copy < dependency_install < min(code_copies)
    assert 'TORCH="${TORCH}"' in steps[dependency_install][1]
    assert "scripts/install.sh" in steps[dependency_install][1]
    # The project itself goes in after the code, through the same script (--no-deps inside it).
    assert any(
        keyword == "RUN" and "scripts/install.sh" in arguments
        for keyword, arguments in steps[max(code_copies) :]
    )

    env = _env(steps)
    assert env["PIP_NO_CACHE_DIR"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == env["PYTHONUNBUFFERED"] == "1"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["HF_HOME"] and env["MODEL_CACHE_DIR"] and env["HOME"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_has_a_health_check_with_time_to_load_the_model(name: str) -> None:
    health = _last(_instructions(name), "HEALTHCHECK")
    assert health is not None
    assert "--start-period=120s" in health
    _exec_form(health.partition(" CMD ")[2])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_run_as_an_unprivileged_user(name: str) -> None:
    user = _last(_instructions(name), "USER")
    assert user is not None
    assert user.split(":")[0] not in {"root", "0"}


def test_api_image_serves_on_8080() -> None:
    steps = _instructions("Dockerfile.api")
    assert _exec_form(_last(steps, "ENTRYPOINT") or "") + _exec_form(_last(steps, "CMD") or "") == [
        "clarion",
        "serve",
    ]
    assert _last(steps, "EXPOSE") == "8080"
    assert "/ping" in (_last(steps, "HEALTHCHECK") or "")


def test_worker_image_runs_the_celery_worker_and_pings_its_own_node() -> None:
    steps = _instructions("Dockerfile.worker")
    assert _exec_form(_last(steps, "ENTRYPOINT") or "") + _exec_form(_last(steps, "CMD") or "") == [
        "clarion",
        "worker",
    ]
    assert _last(steps, "EXPOSE") is None
    health = _last(steps, "HEALTHCHECK") or ""
    assert "worker.main:celery_app inspect ping" in health and "celery@$HOSTNAME" in health


def test_sagemaker_image_starts_the_api_on_docker_run_image_serve() -> None:
    """SageMaker runs `docker run IMAGE serve`: with no entrypoint that runs the `serve` console script."""
    steps = _instructions("Dockerfile.sagemaker")
    assert _exec_form(_last(steps, "ENTRYPOINT") or "[]") == []
    assert _exec_form(_last(steps, "CMD") or "") == ["serve"]
    assert "\nserve = " in (ROOT / "pyproject.toml").read_text(), "the `serve` console script is gone"
    assert _env(steps)["SERVERLESS"] == "true"
    assert _last(steps, "EXPOSE") == "8080"


def test_dockerignore_admits_exactly_what_the_dockerfiles_copy() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert "*" in lines, "the context is an allowlist"
    copied: set[str] = set()
    for name in DOCKERFILES:
        for keyword, arguments in _instructions(name):
            if keyword == "COPY":
                copied.update(source.rstrip("/") for source in arguments.split()[:-1])
    assert copied == allowed
    # README.md is copied because pyproject's readme field needs it to build the project.
    missing = sorted(path for path in copied - {"README.md"} if not (ROOT / path).exists())
    assert not missing


def _compose(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("docker-compose"), "-f", "docker-compose.yml", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_is_valid() -> None:
    done = _compose("config", "-q")
    assert done.returncode == 0, done.stderr


def test_compose_runs_redis_durably_and_waits_for_it() -> None:
    yaml = pytest.importorskip("yaml")
    done = _compose("config")
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]

    redis = services["redis"]
    assert "--appendonly yes" in " ".join(redis["command"])
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert any(volume["target"] == "/data" and volume["type"] == "volume" for volume in redis["volumes"])

    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert services[name]["environment"]["SERVERLESS"] == "false"
        assert any(
            volume["target"] == "/opt/ml/model" and volume["read_only"]
            for volume in services[name]["volumes"]
        )

    api, worker = services["api"], services["worker"]
    assert api["ports"][0]["target"] == 8080
    # `docker compose up --scale worker=N`: nothing that two worker containers could collide on.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["environment"]["WORKER_CONCURRENCY"] == "1"
    shared = dict(api["environment"])
    assert {key: worker["environment"][key] for key in shared} == shared, "api and worker must agree"


def test_install_script_used_by_the_images_accepts_the_tested_environment() -> None:
    """Run what the images run (`scripts/install.sh --no-project`) against this interpreter.

    Everything is installed already, so pip only checks that the pinned runtime set is satisfied by the
    environment the tests ran in: the images install exactly what CI tested.
    """
    done = subprocess.run(
        ["env", f"PYTHON={sys.executable}", "bash", "scripts/install.sh", "--no-project"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def test_the_metrics_override_scrapes_the_api_and_every_worker() -> None:
    yaml = pytest.importorskip("yaml")
    done = _compose("-f", "docker-compose.metrics.yml", "config")
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert services["worker"]["environment"]["METRICS_PORT"] == "9101"
    assert any(v["target"] == "/etc/prometheus/prometheus.yml" for v in services["prometheus"]["volumes"])
    scrape = {
        job["job_name"]: job
        for job in yaml.safe_load((ROOT / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert scrape["clarion-api"]["static_configs"][0]["targets"] == ["api:8080"]
    assert scrape["clarion-api"]["metrics_path"] == "/metrics"
    assert scrape["clarion-worker"]["dns_sd_configs"][0] == {"names": ["worker"], "type": "A", "port": 9101}
