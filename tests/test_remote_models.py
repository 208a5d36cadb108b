"""Remote models (MODEL_URL) over real HTTP: a second Clarion explains a first one's model through
its KServe V2 and V1 endpoints, and the same model served by a predictor Clarion did not write (the
kserve SDK's ModelServer around a transformers pipeline), and answers with the first one's numbers;
what only a hosted model does is a 400; a predictor that answers badly is a 502 and one that is late
a 504, each naming it; /ping follows the predictor's readiness. A SageMaker endpoint is reached
through boto3's own invoke_endpoint, at a runtime API on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


class _SageMakerRuntime(BaseHTTPRequestHandler):
    """SageMaker's runtime API on loopback (`POST /endpoints/<name>/invocations`, what boto3's
    invoke_endpoint calls), its endpoint a transformers pipeline: `application/json`
    {"inputs": [...]} answers the pipeline's own output, as the Hugging Face inference toolkit does;
    `application/jsonlines` {"features": [text]} lines answer a line each with the scores and label
    names (Clarify's JSON Lines exchange)."""

    classifier: Any = None
    signed: list[bool] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        if self.path != "/endpoints/tiny-endpoint/invocations":
            self.send_error(404, "no such endpoint")
            return
        type(self).signed.append(self.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256"))
        raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
        classifier = type(self).classifier
        config = classifier.model.config
        labels = [config.id2label[i] for i in range(config.num_labels)]
        if self.headers["Content-Type"] == "application/jsonlines":
            texts = [json.loads(line)["features"][0] for line in raw.splitlines() if line.strip()]
            lines = []
            for answer in classifier(texts):
                scores = {item["label"]: item["score"] for item in answer}
                lines.append(
                    json.dumps({"probabilities": [scores[label] for label in labels], "labels": labels})
                )
            data, content_type = ("\n".join(lines) + "\n").encode(), "application/jsonlines"
        else:
            data, content_type = (
                json.dumps(classifier(json.loads(raw)["inputs"])).encode(),
                "application/json",
            )
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def sagemaker_runtime(wide_model_dir: Path) -> Iterator[dict[str, str]]:
    """The runtime API on loopback, and the environment that points boto3 at it."""
    from transformers import pipeline

    _SageMakerRuntime.classifier = pipeline("text-classification", model=str(wide_model_dir), top_k=None)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SageMakerRuntime)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": f"http://127.0.0.1:{server.server_address[1]}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    server.shutdown()


@pytest.fixture(scope="module")
def via_sagemaker(
    sagemaker_runtime: dict[str, str], wide_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    # the toolkit's answers name their labels
    yield from _second(
        tmp_path_factory.mktemp("sagemaker"),
        "sagemaker://tiny-endpoint",
        TOKENIZER=str(wide_model_dir),
        **sagemaker_runtime,
    )


@pytest.fixture(scope="module")
def via_sagemaker_jsonlines(
    sagemaker_runtime: dict[str, str], wide_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    # Clarify's configuration: JSON Lines, `probability` and `label_headers` as JMESPath
    yield from _second(
        tmp_path_factory.mktemp("sagemaker-jsonlines"),
        "sagemaker://tiny-endpoint",
        TOKENIZER=str(wide_model_dir),
        REMOTE_CONTENT_TYPE="application/jsonlines",
        REMOTE_SCORES_PATH="probabilities",
        REMOTE_LABELS_PATH="labels",
        **sagemaker_runtime,
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


@pytest.mark.parametrize(
    "protocol",
    ["via_v2", "via_v1", "via_kserve_v2", "via_kserve_v1", "via_sagemaker", "via_sagemaker_jsonlines"],
)
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


def test_a_remote_model_is_explained_on_the_kserve_explain_routes(via_v2: Service) -> None:
    """The explainer a KServe InferenceService points at its predictor: V1 :explain and V2 /explain
    give a remote model's /invocations explanation."""
    expected = _invoke(via_v2, OPTIONS)
    model = via_v2.get("/ping").json()["model"]
    v1 = via_v2.post(f"/v1/models/{model}:explain", json={"instances": TEXTS, **OPTIONS})
    assert v1.status_code == 200, v1.text
    # The predictor's scores for a masked text carry float32 noise from the batch it came in (1e-9
    # here): compared relative to the largest value, as every remote explanation is.
    _assert_same_explanations(v1.json()["explanations"], expected)
    tensor = {"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}
    v2 = via_v2.post(f"/v2/models/{model}/explain", json={"inputs": [tensor], "parameters": OPTIONS})
    assert v2.status_code == 200, v2.text
    (attributions,) = [o for o in v2.json()["outputs"] if o["name"] == "attributions"]
    _assert_same_explanations([json.loads(document) for document in attributions["data"]], expected)


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
    delay = 0.0  # seconds each answer takes ("slow": 3)
    in_flight = 0
    most_in_flight = 0
    largest_batch = 0
    lock = threading.Lock()

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
        cls = type(self)
        texts = body["inputs"][0]["data"]
        with cls.lock:
            cls.calls += 1
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
            cls.largest_batch = max(cls.largest_batch, len(texts))
        try:
            time.sleep(3 if cls.behaviour == "slow" else cls.delay)
        finally:
            # Out of flight before the answer goes out: the client may send its next call as soon as
            # it has read this one, before this thread would get back here after writing.
            with cls.lock:
                cls.in_flight -= 1
        self._answer(body, texts)

    def _answer(self, body: dict, texts: list[str]) -> None:
        assert body["inputs"][0]["name"] == "sentence"  # the input the metadata names
        behaviour = type(self).behaviour
        if behaviour == "error":
            self._send(500, {"error": "the model broke"})
        elif behaviour == "garbage":
            self._send(200, {"outputs": [{"name": "scores", "datatype": "FP32", "data": [0.5]}]})
        else:
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


def test_sagemaker_calls_are_boto3s_signed_invoke_endpoint(via_sagemaker: Service) -> None:
    _SageMakerRuntime.signed.clear()
    assert via_sagemaker.post("/invocations", json={"inputs": "a boring plot"}).status_code == 200
    assert _SageMakerRuntime.signed == [True]


def test_a_sagemaker_endpoint_that_refuses_is_a_502_naming_it(
    sagemaker_runtime: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.errors import PredictorError
    from shared.runtime.predictors import SageMakerPredictor
    from shared.settings import Settings

    for name, value in sagemaker_runtime.items():
        monkeypatch.setenv(name, value)
    predictor = SageMakerPredictor(Settings(model_url="sagemaker://no-such-endpoint"))
    with pytest.raises(PredictorError, match="sagemaker://no-such-endpoint") as raised:
        predictor.scores(["a text"], LABELS)
    assert "404" in raised.value.message and predictor.ready() is not None


def test_masked_texts_go_in_batches_with_bounded_calls_in_flight(fake_predictor: str) -> None:
    """REMOTE_BATCH_SIZE texts to a call at most, REMOTE_CONCURRENCY calls at once at most (and
    that many used); the values add up to the score's change, "good" carrying the most."""
    from shared.explanation.explainer import explain_texts
    from shared.io.schemas import ExplainOptions
    from shared.runtime.engine import Engine
    from shared.runtime.remote import load_remote_model
    from shared.settings import Settings

    settings = Settings(
        model_url=fake_predictor, labels=("bad", "good"), remote_batch_size=3, remote_concurrency=2
    )
    model = load_remote_model(settings)
    engine = Engine(model, model.pass_limits)
    # An earlier test's "slow" call may still be sleeping on the predictor: it is not this test's.
    wait_until(lambda: _Predictor.in_flight == 0, 10, what="earlier calls to the predictor to end")
    _Predictor.behaviour, _Predictor.delay = "ok", 0.05
    _Predictor.most_in_flight = _Predictor.largest_batch = 0
    try:
        text = "the plot is thin but the acting is good and the music is fine"
        options = ExplainOptions(masking="text", granularity="word", max_evals=60, labels=["good"])
        [explanation] = explain_texts(engine, [text], options)
    finally:
        _Predictor.delay = 0.0
        engine.stop()
    assert _Predictor.largest_batch == 3 and _Predictor.most_in_flight == 2
    values = explanation.values["good"]  # a list: units repeat ("the", "is")
    assert sum(values) == pytest.approx(0.55)  # f(text) - f(all masked)
    assert explanation.units[max(range(len(values)), key=lambda i: abs(values[i]))] == "good"


def test_a_request_past_its_deadline_stops_waiting_for_the_predictor(fake_predictor: str) -> None:
    """The ticket's deadline holds while a call is in flight: its error comes at the deadline, not
    when the predictor answers; a cancelled ticket's rows are never sent."""
    from shared.errors import ExplanationTimeout, JobCancelled
    from shared.explanation.explainer import explain_texts
    from shared.io.schemas import ExplainOptions
    from shared.runtime.engine import Engine, Ticket
    from shared.runtime.remote import load_remote_model
    from shared.settings import Settings

    model = load_remote_model(Settings(model_url=fake_predictor, labels=("bad", "good"), remote_timeout_s=10))
    engine = Engine(model, model.pass_limits)
    options = ExplainOptions(masking="text", granularity="word", max_evals=20)
    try:
        _Predictor.behaviour = "slow"
        started = time.monotonic()
        with pytest.raises(ExplanationTimeout):
            explain_texts(engine, ["good enough"], options, Ticket.within(0.5, "too slow"))
        assert time.monotonic() - started < 1.5
        _Predictor.behaviour, calls = "ok", _Predictor.calls
        cancelled = Ticket()
        cancelled.cancel()
        with pytest.raises(JobCancelled):
            explain_texts(engine, ["good enough"], options, cancelled)
        time.sleep(3)  # the slow call ends
        assert _Predictor.calls == calls
    finally:
        _Predictor.behaviour = "ok"
        engine.stop()


def test_texts_that_tokenize_alike_are_each_scored_on_their_own_text(
    fake_predictor: str, tiny_model_dir: Path
) -> None:
    """An uncased TOKENIZER reads "good film" and "Good film" as the same tokens, but the predictor
    reads text and tells them apart ("good" in the text or not): each text, and each of its masked
    texts, is asked about on its own, in one request and in one pass."""
    from shared.explanation.explainer import explain_texts
    from shared.io.schemas import ExplainOptions
    from shared.runtime.engine import Engine
    from shared.runtime.remote import load_remote_model
    from shared.serving.classifier import classify
    from shared.settings import Settings

    settings = Settings(model_url=fake_predictor, labels=("bad", "good"), tokenizer=str(tiny_model_dir))
    model = load_remote_model(settings)
    texts = ["good film", "Good film"]
    lower_ids, upper_ids = (e.ids for e in model.encoder.encode(texts))
    assert lower_ids.tolist() == upper_ids.tolist()  # the tokenizer cannot tell them apart
    engine = Engine(model, model.pass_limits)
    _Predictor.behaviour = "ok"
    try:
        scores = [{s.label: s.score for s in c.prediction} for c in classify(engine, texts)]
        options = ExplainOptions(masking="text", granularity="word", max_evals=20, labels=["good"])
        lower, upper = explain_texts(engine, texts, options)
    finally:
        engine.stop()
    assert scores == [pytest.approx({"bad": 0.25, "good": 0.75}), pytest.approx({"bad": 0.8, "good": 0.2})]
    assert lower.units == ["good", "film"] and upper.units == ["Good", "film"]
    assert lower.values["good"] == pytest.approx([0.55, 0.0])
    assert upper.values["good"] == pytest.approx([0.0, 0.0])


def test_a_row_waiting_for_its_pass_keeps_its_text_however_many_are_encoded_meanwhile(
    fake_predictor: str,
) -> None:
    """A remote model remembers each row's text while the row exists: a row encoded before 70,000
    others (more than a busy deployment's passes in flight hold; a count-bounded memory had
    forgotten it, and its pass failed) is still scored on its own text, and rows freed leave
    nothing behind."""
    import gc

    from shared.runtime.remote import load_remote_model
    from shared.settings import Settings

    model = load_remote_model(Settings(model_url=fake_predictor, labels=("bad", "good")))
    _Predictor.behaviour = "ok"
    (waiting,) = model.encode(["a good film"])
    for start in range(0, 70_000, 10_000):
        model.encode([f"bad film {i}" for i in range(start, start + 10_000)])  # freed at once
    gc.collect()
    assert model.forward(waiting.rows(waiting.ids)).tolist() == [[0.25, 0.75]]
    assert len(model._texts) == 1  # the freed rows' texts are forgotten
    del waiting
    gc.collect()
    model.encode([])
    assert model._texts == {}
