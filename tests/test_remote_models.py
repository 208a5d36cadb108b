"""Remote models (MODEL_URL) over real HTTP: a second Clarion explains a first one's model through
its KServe V2 and V1 endpoints, and the same model served by a predictor Clarion did not write (the
kserve SDK's ModelServer around a transformers pipeline), and answers with the first one's numbers;
what only a hosted model does is a 400; a predictor that answers badly is a 502 and one that is late
a 504, each naming it; /ping follows the predictor's readiness."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.support import (
    REPO,
    Service,
    assert_close_to_scale,
    base_env,
    build_tiny_model,
    free_port,
    running_service,
    stop_process_group,
    wait_healthy,
    wait_until,
)

TEXTS = ["i loved this film , the acting was superb .", "a boring , awful plot . not good at all"]
LABELS = ["negative", "neutral", "positive"]
# Explanations whose values carry signal: 30 evaluations of a text's words, SHAP's batch size.
OPTIONS = {"max_evals": 30, "seed": 3, "granularity": "word"}


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model whose logits span several units (scores far from uniform)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("wide-model"), labels=LABELS, seed=7, initializer_range=1.0
    )


@pytest.fixture(scope="module")
def first(wide_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {
        "MODEL_DIR": str(wide_model_dir),
        "MODEL_NAME": "tiny",
        "SERVERLESS": "true",
        "EXPLANATION_CACHE_SIZE": "0",
        "EXACT_BACKEND": "torch",
    }
    with running_service(tmp_path_factory.mktemp("first"), env) as svc:
        wait_healthy(svc)
        yield svc


def _second(tmp_path: Path, url: str, **env: str) -> Iterator[Service]:
    with running_service(
        tmp_path, {"MODEL_URL": url, "SERVERLESS": "true", "EXPLANATION_CACHE_SIZE": "0", **env}
    ) as svc:
        wait_healthy(svc)
        yield svc


@pytest.fixture(scope="module")
def via_v2(
    first: Service, wide_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    yield from _second(
        tmp_path_factory.mktemp("v2"), f"{first.url}/v2/models/tiny", TOKENIZER=str(wide_model_dir)
    )


@pytest.fixture(scope="module")
def via_v1(
    first: Service, wide_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    yield from _second(
        tmp_path_factory.mktemp("v1"),
        f"{first.url}/v1/models/tiny",
        TOKENIZER=str(wide_model_dir),
        REMOTE_BATCH_SIZE="7",  # masked texts in several calls, in flight together
        REMOTE_CONCURRENCY="3",
    )


@pytest.fixture(scope="module")
def kserve_predictor(wide_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The kserve SDK's ModelServer around a transformers pipeline (tests/kserve_pipeline_predictor.py),
    in its own process: its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("kserve-predictor") / "predictor.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "kserve_pipeline_predictor.py"),
                str(wide_model_dir),
                "tiny",
                str(port),
            ],
            cwd=REPO,
            env=base_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the kserve predictor exited:\n{log_path.read_text()[-3000:]}")
        try:
            return requests.get(f"{url}/v2/models/tiny/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(ready, 120, what="the kserve predictor")
        yield url
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def via_kserve_v2(
    kserve_predictor: str, wide_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    # kserve's metadata names no labels: LABELS says what its FP32 output's columns are
    yield from _second(
        tmp_path_factory.mktemp("kserve-v2"),
        f"{kserve_predictor}/v2/models/tiny",
        TOKENIZER=str(wide_model_dir),
        LABELS=",".join(LABELS),
    )


@pytest.fixture(scope="module")
def via_kserve_v1(
    kserve_predictor: str, wide_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    # the pipeline's answers name their labels: no LABELS needed
    yield from _second(
        tmp_path_factory.mktemp("kserve-v1"),
        f"{kserve_predictor}/v1/models/tiny",
        TOKENIZER=str(wide_model_dir),
    )


def _invoke(service: Service, explain: dict | None = None) -> list[dict]:
    body: dict = {"inputs": TEXTS}
    if explain is not None:
        body["parameters"] = {"explain": True, **explain}
    response = service.post("/invocations", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _assert_same_scores(actual: list[dict], expected: list[dict]) -> None:
    for a, e in zip(actual, expected, strict=True):
        assert [p["label"] for p in a["prediction"]] == [p["label"] for p in e["prediction"]]
        for p, q in zip(a["prediction"], e["prediction"], strict=True):
            assert abs(p["score"] - q["score"]) <= 1e-6, (p, q)


def _assert_same_explanations(actual: list[dict], expected: list[dict]) -> None:
    for a, e in zip(actual, expected, strict=True):
        assert [unit for unit, _ in a["explanation"]] == [unit for unit, _ in e["explanation"]]
        parameters = a["explanation_parameters"]
        assert parameters["masking"] == "text" and parameters["granularity"] == "word"
        labels = list(e["explanation"][0][1])  # V1 has no metadata: its labels come in another order
        assert_close_to_scale(
            [[v[label] for label in labels] for _, v in a["explanation"]],
            [[v[label] for label in labels] for _, v in e["explanation"]],
            rel=1e-5,
        )
        assert a["base_values"] == pytest.approx(e["base_values"], abs=1e-6)


@pytest.mark.parametrize("protocol", ["via_v2", "via_v1", "via_kserve_v2", "via_kserve_v1"])
def test_a_second_clarion_answers_with_the_first_ones_numbers(
    protocol: str, first: Service, request: pytest.FixtureRequest
) -> None:
    second: Service = request.getfixturevalue(protocol)
    expected = _invoke(first)
    spread = max(p["score"] for r in expected for p in r["prediction"])
    assert spread > 0.6, f"a model whose scores say little: top score {spread}"
    _assert_same_scores(_invoke(second), expected)
    # The remote model's default masking is "text"; the first explains the same way when asked.
    expected = _invoke(first, {**OPTIONS, "masking": "text"})
    _assert_same_explanations(_invoke(second, OPTIONS), expected)


def test_token_units_come_from_the_tokenizer(first: Service, via_v2: Service) -> None:
    options = {"max_evals": 20, "seed": 1, "granularity": "token"}
    expected = _invoke(first, {**options, "masking": "text"})
    actual = _invoke(via_v2, options)
    for a, e in zip(actual, expected, strict=True):
        assert [unit for unit, _ in a["explanation"]] == [unit for unit, _ in e["explanation"]]
        assert_close_to_scale(
            [list(v.values()) for _, v in a["explanation"]],
            [list(v.values()) for _, v in e["explanation"]],
            rel=1e-5,
        )


def test_ping_reports_the_predictor(via_v2: Service, first: Service) -> None:
    ping = via_v2.get("/ping").json()
    assert ping["status"] == "healthy" and ping["exact_backend"] == "remote"
    assert ping["predictor"] == {"url": f"{first.url}/v2/models/tiny", "ready": True}
    assert ping["labels"] == LABELS  # from the V2 metadata
    assert ping["model"] == "tiny"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"masking": "tokens"}, 'masking "tokens"'),
        ({"precision": "fast"}, 'precision "fast"'),
        ({"precision": "amortized"}, 'precision "amortized"'),
        ({"output": "logit"}, 'output "logit"'),
        ({"faithfulness": True}, "faithfulness"),
        ({"long_text": "windows", "granularity": "word"}, "windows"),
    ],
)
def test_what_only_a_hosted_model_does_is_a_400(via_v2: Service, options: dict, named: str) -> None:
    response = via_v2.post(
        "/invocations", json={"inputs": TEXTS[0], "parameters": {"explain": True, **options}}
    )
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]["message"]


def test_text_pairs_are_a_400(via_v2: Service) -> None:
    response = via_v2.post("/invocations", json={"inputs": {"text": "a", "text_pair": "b"}})
    assert response.status_code == 400, response.text
    assert "text pairs" in response.json()["error"]["message"]


# ---- predictors that misbehave ------------------------------------------------------------------


class _Predictor(BaseHTTPRequestHandler):
    """A V2 predictor on loopback whose answers the test sets: `behaviour` is "ok", "garbage",
    "error", "slow" or "down" (not ready)."""

    behaviour = "ok"
    calls = 0

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.endswith("/ready"):
            down = type(self).behaviour == "down"
            self._send(503 if down else 200, {"ready": not down})
        else:
            self._send(
                200, {"name": "m", "inputs": [{"name": "sentence", "datatype": "BYTES", "shape": [-1]}]}
            )

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        texts = body["inputs"][0]["data"]
        assert body["inputs"][0]["name"] == "sentence"  # the input the metadata names
        behaviour = type(self).behaviour
        if behaviour == "error":
            self._send(500, {"error": "the model broke"})
        elif behaviour == "garbage":
            self._send(200, {"outputs": [{"name": "scores", "datatype": "FP32", "data": [0.5]}]})
        else:
            if behaviour == "slow":
                import time

                time.sleep(3)
            scores = [[0.25, 0.75] if "good" in t else [0.8, 0.2] for t in texts]
            data = [x for row in scores for x in row]
            self._send(
                200,
                {"outputs": [{"name": "scores", "datatype": "FP32", "shape": [len(texts), 2], "data": data}]},
            )


@pytest.fixture(scope="module")
def fake_predictor() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Predictor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v2/models/m"
    server.shutdown()


@pytest.fixture(scope="module")
def via_fake(fake_predictor: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    _Predictor.behaviour = "ok"
    yield from _second(
        tmp_path_factory.mktemp("fake"),
        fake_predictor,
        LABELS="bad,good",
        REMOTE_TIMEOUT="1",
        REMOTE_RETRIES="0",
    )


def test_without_a_tokenizer_words_come_from_the_text(via_fake: Service) -> None:
    _Predictor.behaviour = "ok"
    response = via_fake.post(
        "/invocations", json={"inputs": "not good, sadly.", "parameters": {"explain": True}}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["explanation_parameters"]["granularity"] == "word"
    assert answer["explanation_parameters"]["masking"] == "text"
    units = [unit for unit, _ in answer["explanation"]]
    assert units == ["not", "good", ",", "sadly", "."]
    values = {unit: v["good"] for unit, v in answer["explanation"]}
    assert (
        values["good"] == pytest.approx(0.55) and max(abs(v) for u, v in values.items() if u != "good") < 1e-9
    )
    response = via_fake.post(
        "/invocations", json={"inputs": "x", "parameters": {"explain": True, "granularity": "token"}}
    )
    assert response.status_code == 400 and "TOKENIZER" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("behaviour", "status", "says"),
    [("error", 502, "answered 500"), ("garbage", 502, "score(s)"), ("slow", 504, "REMOTE_TIMEOUT")],
)
def test_a_predictor_that_fails_is_a_502_or_504_naming_it(
    via_fake: Service, fake_predictor: str, behaviour: str, status: int, says: str
) -> None:
    _Predictor.behaviour = behaviour
    try:
        response = via_fake.post("/invocations", json={"inputs": "good"})
    finally:
        _Predictor.behaviour = "ok"
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert fake_predictor in message and says in message


def test_ping_follows_the_predictor(via_fake: Service) -> None:
    _Predictor.behaviour = "down"
    try:
        wait_until(lambda: via_fake.get("/ping").status_code == 503, 10, what="/ping 503")
        ping = via_fake.get("/ping").json()
        assert ping["predictor"]["ready"] is False and "503" in ping["predictor"]["error"]
    finally:
        _Predictor.behaviour = "ok"
    wait_until(lambda: via_fake.get("/ping").status_code == 200, 10, what="/ping 200")


def test_an_unreachable_predictor_is_retried_then_a_502() -> None:
    """A connection refused is tried again (predict is idempotent), REMOTE_RETRIES times, then it is
    a PredictorError (502) naming the predictor."""
    from shared.errors import PredictorError
    from shared.runtime.predictors import V2Predictor
    from shared.settings import Settings

    url = f"http://127.0.0.1:{free_port()}/v2/models/m"
    predictor = V2Predictor(Settings(model_url=url, remote_retries=2))
    with pytest.raises(PredictorError, match="3 tries") as raised:
        predictor.scores(["a text"], LABELS)
    assert url in raised.value.message and raised.value.code == "bad_gateway"
