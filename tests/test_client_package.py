"""clarion-client as users get it: its wheel built from client/, installed into a fresh virtual
environment that has none of the server (no torch, transformers, Flask, Celery), and used from there
against a real Clarion with Redis and a worker: classify, explain, a job waited for, an analysis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO, assert_same_prediction, job_stack

# pip as a user runs it, less byte-compiling every installed module up front: Python compiles what
# it imports, and for the [shap] extra's packages that up-front pass is most of the install's time.
PIP_INSTALL = ("-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile")
SERVER_PACKAGES = ("torch", "transformers", "flask", "celery", "shared", "api", "worker", "shap")

# Runs in the fresh environment: every call a notebook would make, and what importing loaded.
USER_SCRIPT = """
import json, sys
from clarion_client import Clarion, __all__

loaded_by_import = sorted(m for m in sys.modules if m.split(".")[0] in SERVER)
clarion = Clarion(URL, timeout=120)
classified = clarion.classify("A warm and funny film.")
explained = clarion.explain("A warm and funny film.", max_evals=40)
job = clarion.wait(clarion.submit(["Dull.", "A delight."], max_evals=40), timeout=120)
rows = [{"text": "Dull and slow.", "gold": "negative"}, {"text": "A delight.", "gold": "positive"}]
analysis = clarion.wait(clarion.analyze(rows, label_field="gold", max_evals=40), timeout=120)
print(json.dumps({
    "names": __all__,
    "loaded_by_import": loaded_by_import,
    "loaded_at_the_end": sorted(m for m in sys.modules if m.split(".")[0] in SERVER),
    "classified": classified,
    "explained": explained,
    "job": {"status": job.status, "result": job.result},
    "analysis": {
        "status": analysis.status,
        "texts": analysis.texts,
        "labels": sorted(analysis.analysis["explanations"]["kernel_shap"]),
    },
}))
"""

# The [shap] extra in a notebook: a served explanation drawn by shap.plots.text.
SHAP_SCRIPT = """
import json, sys, shap
from clarion_client import Clarion, shap_explanation

text = "A warm and funny film."
explanation = shap_explanation(Clarion(URL).explain(text, max_evals=40), text)
html = shap.plots.text(explanation, display=False)
words = [str(unit).strip() for unit in explanation.data if str(unit).strip().isalnum()]
print(json.dumps({
    "kind": type(explanation).__name__,
    "units": len(explanation.values),
    "words": words,
    "undrawn": [word for word in words if word not in html],
    "server": [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "flask", "celery")],
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(REPO / "client")],
        check=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("clarion_client-*.whl")
    return built


@pytest.fixture(scope="module")
def user_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed as a user would: pip resolves numpy."""
    venv = tmp_path_factory.mktemp("user") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    started = time.monotonic()
    subprocess.run(
        [str(python), *PIP_INSTALL, str(wheel)],
        check=True, timeout=600,
    )  # fmt: skip
    print(f"clarion-client installed in {time.monotonic() - started:.1f} s ({wheel.stat().st_size} bytes)")
    return python


def test_the_wheel_holds_the_client_alone(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"clarion_client", "clarion_client-0.1.0.dist-info"}
    assert "clarion_client/py.typed" in names and "clarion_client/__init__.py" in names
    metadata = zipfile.ZipFile(wheel).read("clarion_client-0.1.0.dist-info/METADATA").decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires[0].startswith("Requires-Dist: numpy")
    assert all("extra == " in line for line in requires[1:])  # shap and matplotlib: the [shap] extra only


def test_the_fresh_environment_has_the_client_and_numpy_and_nothing_of_the_server(user_env: Path) -> None:
    names = (*SERVER_PACKAGES, "numpy", "clarion_client")
    check = (
        f"import importlib.util as u, json; print(json.dumps({{n: bool(u.find_spec(n)) for n in {names!r}}}))"
    )
    found = json.loads(
        # From the user's own folder: the repository's packages are not on the path there.
        subprocess.run(
            [str(user_env), "-c", check], cwd=user_env.parents[2], check=True, capture_output=True, text=True
        ).stdout
    )
    assert found.pop("numpy") and found.pop("clarion_client")
    assert not any(found.values()), found


def test_from_the_fresh_environment_against_a_real_server(
    user_env: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {"MODEL_DIR": str(tiny_model_dir), "WORKER_CONCURRENCY": "1", "TORCH_THREADS": "1"}
    with job_stack(tmp_path_factory.mktemp("client-package"), env) as stack:
        script = f"URL = {stack.api.url!r}\nSERVER = {SERVER_PACKAGES!r}\n" + USER_SCRIPT
        done = subprocess.run(
            [str(user_env), "-c", script],
            cwd=user_env.parents[2],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout.splitlines()[-1])
        same = stack.api.post("/invocations", json={"data": "A warm and funny film.", "explain": True,
                                                    "max_evals": 40}).json()  # fmt: skip
    assert seen["loaded_by_import"] == [] and seen["loaded_at_the_end"] == []
    assert "Clarion" in seen["names"] and "shap_explanation" in seen["names"]
    assert_same_prediction(seen["classified"]["prediction"], same["prediction"])
    assert [unit for unit, _ in seen["explained"]["explanation"]] == [unit for unit, _ in same["explanation"]]
    assert seen["job"]["status"] == "succeeded" and len(seen["job"]["result"]) == 2
    labels = sorted(score["label"] for score in same["prediction"])
    assert seen["analysis"] == {"status": "succeeded", "texts": 2, "labels": labels}


def test_with_the_shap_extra_a_served_explanation_draws_with_shap(
    wheel: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`pip install "clarion-client[shap]"`: shap and matplotlib come along, and a served explanation
    becomes a shap.Explanation that shap.plots.text draws (a notebook's use), still with no server."""
    from tests.support import running_service, wait_healthy

    folder = tmp_path_factory.mktemp("user-shap")
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True, timeout=300)
    python = folder / "venv" / "bin" / "python"
    subprocess.run(
        [str(python), *PIP_INSTALL, f"{wheel}[shap]"],
        check=True, timeout=900,
    )  # fmt: skip
    env = {"MODEL_DIR": str(tiny_model_dir), "SERVERLESS": "true", "TORCH_THREADS": "1"}
    with running_service(folder, env) as service:
        wait_healthy(service)
        script = SHAP_SCRIPT.replace("URL", repr(service.url))
        done = subprocess.run(
            [str(python), "-c", script], cwd=folder, capture_output=True, text=True, timeout=600
        )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["kind"] == "Explanation" and seen["units"] >= 5
    assert seen["words"] and seen["undrawn"] == []  # shap.plots.text drew every word it was given
    assert seen["server"] == []
