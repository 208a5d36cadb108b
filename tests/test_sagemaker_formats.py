"""SageMaker's formats over real HTTP: Clarify's exchange, Batch Transform's record bodies and
/execution-parameters, content negotiation, custom attributes, request ids; and the same requests as
boto3's sagemaker-runtime client builds them, through a loopback proxy."""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support import Service, running_service, wait_healthy, wait_until

CLARIFY = {"Content-Type": "application/jsonlines", "Accept": "application/json"}
ENABLE = "X-Amzn-SageMaker-Enable-Explanations"
ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TEXTS = ["i loved this film , the acting was superb .", "one long string of cliches .", "boring"]


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "SERVERLESS": "true",
        "MAX_TEXTS_PER_REQUEST": "4",  # record batches larger than this are processed in chunks
        "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1",
        "MAX_REQUEST_BYTES": "20000",  # below the payload limit: Batch Transform's limit wins
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3",
        "SAGEMAKER_BATCH_STRATEGY": "multi_record",
        "CLARIFY_NUM_SAMPLES": "300",
        "CLARIFY_LABEL_HEADERS": "neg,neu,pos",
        "ACCESS_LOG": "true",
    }
    with running_service(tmp_path_factory.mktemp("sagemaker"), env) as running:
        wait_healthy(running)
        yield running


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def reference(service: Service, text: str, **options) -> dict:
    """What /invocations says about one text with these options (JSON body)."""
    request = {"data": text, "explain": True, "labels": "all", **options}
    return service.post("/invocations", json=request).json()


# ---- Clarify --------------------------------------------------------------------------------------


def test_a_clarify_exchange_has_clarifys_shape_and_our_numbers(service: Service) -> None:
    body = jsonl(*({"features": [t]} for t in TEXTS))
    response = service.post("/invocations", data=body, headers=CLARIFY)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    answer = response.json()
    assert list(answer) == ["version", "predictions", "label_headers", "explanations"]
    assert answer["version"] == "1.0" and answer["label_headers"] == ["neg", "neu", "pos"]
    assert answer["predictions"]["content_type"] == "text/csv"
    rows = [[float(v) for v in line.split(",")] for line in answer["predictions"]["data"].splitlines()]
    (entries,) = answer["explanations"].values()
    assert list(answer["explanations"]) == ["kernel_shap"] and len(entries) == len(rows) == 3
    labels = ["negative", "neutral", "positive"]
    for text, row, entry in zip(TEXTS, rows, entries, strict=True):
        ours = reference(service, text, max_evals=300, granularity="word")
        scores = {p["label"]: p["score"] for p in ours["prediction"]}
        assert row == pytest.approx([scores[label] for label in labels], abs=1e-6)
        (feature,) = entry
        assert feature["feature_type"] == "text"
        for attribution, (unit, values), (start, _) in zip(
            feature["attributions"], ours["explanation"], ours["offsets"], strict=True
        ):
            assert attribution["description"] == {"partial_text": unit, "start_idx": start}
            assert text[start:].startswith(unit)
            assert attribution["attribution"] == pytest.approx([values[label] for label in labels], abs=1e-9)


def test_the_header_chooses_which_records_are_explained(service: Service) -> None:
    body = jsonl(*({"features": [t]} for t in TEXTS))
    none = service.post("/invocations", data=body, headers=CLARIFY | {ENABLE: "`false`"}).json()
    assert none["explanations"] == {} and len(none["predictions"]["data"].splitlines()) == 3
    rows = [[float(v) for v in line.split(",")] for line in none["predictions"]["data"].splitlines()]
    low, middle, _ = sorted(row[0] for row in rows)
    threshold = (low + middle) / 2  # the two records whose first score is above this
    some = service.post("/invocations", data=body, headers=CLARIFY | {ENABLE: f"[0]>=`{threshold}`"}).json()
    chosen = [entry is not None for entry in some["explanations"]["kernel_shap"]]
    assert chosen == [row[0] >= threshold for row in rows] and sum(chosen) == 2
    for header, word in (("[0", "not a JMESPath expression"), ("[0]", "must give true or false")):
        bad = service.post("/invocations", data=body, headers=CLARIFY | {ENABLE: header})
        assert bad.status_code == 400 and ENABLE in bad.json()["error"]["message"]
        assert word in bad.json()["error"]["message"]


def test_clarify_csv_records_and_unreadable_lines(service: Service) -> None:
    body = '"good film, truly"\n"multi\nline ."\nboring\n'
    answer = service.post("/invocations", data=body, headers=CLARIFY | {"Content-Type": "text/csv"}).json()
    entries = answer["explanations"]["kernel_shap"]
    assert len(entries) == 3
    assert [a["description"]["partial_text"] for a in entries[0][0]["attributions"]][:3] == [
        "good",
        "film",
        ",",
    ]
    bad = service.post("/invocations", data='{"features": ["ok"]}\nnot json\n', headers=CLARIFY)
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("line 2: not JSON")
    empty = service.post("/invocations", data='{"text": "ok"}\n{"text": "  "}\n', headers=CLARIFY)
    assert empty.status_code == 400 and "line 2" in empty.json()["error"]["message"]


def test_clarify_mode_answers_every_json_client_in_clarifys_shape(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {"MODEL_DIR": str(tiny_model_dir), "SERVERLESS": "true", "CLARIFY_MODE": "true"}
    env |= {"CLARIFY_USE_LOGIT": "true", "CLARIFY_GRANULARITY": "sentence"}
    with running_service(tmp_path, env) as clarify:
        wait_healthy(clarify)
        text = "a superb cast . one long string of cliches ."
        answer = clarify.post("/invocations", json={"data": text}).json()  # a plain JSON client
        assert answer["version"] == "1.0" and answer["label_headers"] == ["negative", "neutral", "positive"]
        ((feature,),) = answer["explanations"]["kernel_shap"]
        # The same explanation asked for explicitly (logits, sentences, every label) as JSON Lines.
        explicit = {
            "data": text,
            "explain": True,
            "labels": "all",
            "granularity": "sentence",
            "output": "logit",
        }
        lines = clarify.post("/invocations", json=explicit, headers={"Accept": "application/jsonlines"})
        ours = json.loads(lines.text.splitlines()[0])
        assert [a["description"]["partial_text"] for a in feature["attributions"]] == [
            "a superb cast .",
            "one long string of cliches .",
        ]
        for attribution, (_, values) in zip(feature["attributions"], ours["explanation"], strict=True):
            assert attribution["attribution"] == pytest.approx(
                [values[label] for label in answer["label_headers"]]
            )


# ---- Batch Transform ---------------------------------------------------------------------------


def test_execution_parameters(service: Service) -> None:
    assert service.get("/execution-parameters").json() == {
        "MaxConcurrentTransforms": 3,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 1,
    }


def test_a_multi_record_batch_gets_one_line_per_record_in_order(service: Service) -> None:
    texts = [f"{TEXTS[i % 3]} {i}" for i in range(30)]  # 30 records, MAX_TEXTS_PER_REQUEST is 4
    records = [{"text": t} for t in texts]
    lines = jsonl(*records[:12]) + "{not json\n" + jsonl(*records[12:]) + '{"text": ""}\n'
    response = service.post("/invocations", data=lines, headers={"Content-Type": "application/jsonlines"})
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/jsonlines"
    out = [json.loads(line) for line in response.text.splitlines()]
    assert len(out) == 32
    assert out[12]["error"]["message"].startswith("line 13: not JSON")
    assert out[31]["error"]["message"].startswith("line 32: the text is empty")
    good = [o for i, o in enumerate(out) if i not in (12, 31)]
    one_by_one = [service.post("/invocations", json={"data": t}).json() for t in texts[::7]]
    assert [g["prediction"] for g in good[::7]] == [o["prediction"] for o in one_by_one]


def test_a_payload_past_max_request_bytes_fits_batch_transforms_limit(service: Service) -> None:
    big = jsonl(*({"text": f"{TEXTS[i % 3]} number {i}"} for i in range(1500)))
    assert 20000 < len(big) < 1024 * 1024
    response = service.post(
        "/invocations", data=big, headers={"Content-Type": "application/jsonlines"}, timeout=300
    )
    assert response.status_code == 200 and len(response.text.splitlines()) == 1500
    too_big = service.post(
        "/invocations", data="x" * (1024 * 1024 + 10), headers={"Content-Type": "text/csv"}
    )
    assert too_big.status_code == 413


# ---- negotiation and headers ------------------------------------------------------------------------


def test_accept_picks_the_response_type(service: Service) -> None:
    request = {"data": TEXTS[:2]}
    lines = service.post("/invocations", json=request, headers={"Accept": "application/jsonlines"})
    assert lines.headers["Content-Type"] == "application/jsonlines"
    assert [json.loads(line)["prediction"] for line in lines.text.splitlines()] == [
        r["prediction"] for r in service.post("/invocations", json=request).json()
    ]
    table = service.post("/invocations", json=request, headers={"Accept": "text/csv"})
    assert table.headers["Content-Type"].startswith("text/csv")
    for line, result in zip(
        table.text.splitlines(), service.post("/invocations", json=request).json(), strict=True
    ):
        label, score = line.split(",")
        assert label == result["prediction"][0]["label"] and float(score) == pytest.approx(
            result["prediction"][0]["score"], abs=1e-6
        )
    refused = service.post("/invocations", json=request, headers={"Accept": "application/xml"})
    assert refused.status_code == 406
    assert "application/jsonlines" in refused.json()["error"]["message"]
    assert (
        service.post("/invocations", json=request, headers={"Accept": "*/*"}).headers["Content-Type"]
        == "application/json"
    )


def test_custom_attributes_carry_options_and_come_back(service: Service) -> None:
    headers = {
        "Content-Type": "application/jsonlines",
        ATTRIBUTES: "explain=true;max_evals=40;granularity=word",
    }
    response = service.post("/invocations", data=jsonl({"text": TEXTS[0]}), headers=headers)
    (result,) = [json.loads(line) for line in response.text.splitlines()]
    assert result["explanation_parameters"]["max_evals"] == 40
    assert result["explanation_parameters"]["granularity"] == "word"
    echo = response.headers[ATTRIBUTES]
    assert echo == f"request_id={response.headers['X-Request-Id']};explain=true;max_evals=40;granularity=word"
    # A JSON body's own options win over the header's.
    mixed = service.post(
        "/invocations",
        json={"data": TEXTS[0], "max_evals": 60},
        headers={ATTRIBUTES: "explain=true;max_evals=40"},
    )
    assert mixed.json()["explanation_parameters"]["max_evals"] == 60
    # The client's own parts (trace ids, metadata) are passed through and echoed as it wrote them.
    traced = service.post(
        "/invocations",
        json={"data": TEXTS[0]},
        headers={ATTRIBUTES: "trace=Root=1-5759e988;explain=true;colour=red;tenant:42"},
    )
    assert traced.status_code == 200 and "explanation" in traced.json()
    rid = traced.headers["X-Request-Id"]
    assert (
        traced.headers[ATTRIBUTES]
        == f"request_id={rid};explain=true;trace=Root=1-5759e988;colour=red;tenant:42"
    )
    for bad in ("explain=maybe", "max_evals", "seed=x", "x" * 1025, "explain=true;\u00e9=1"):
        refused = service.post(
            "/invocations", json={"data": "good"}, headers={ATTRIBUTES: bad.encode("utf-8").decode("latin-1")}
        )
        assert refused.status_code == 400 and ATTRIBUTES in refused.json()["error"]["message"], bad


def test_every_response_carries_a_request_id_and_the_log_has_it(service: Service) -> None:
    given = service.get("/ping", headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    made = service.post(
        "/invocations", data=b"\xff\xfe", headers={"Content-Type": "text/plain; charset=utf-8"}
    )
    assert made.status_code == 400 and len(made.headers["X-Request-Id"]) == 32
    odd = service.get("/ping", headers={"X-Request-Id": "no spaces allowed here"})
    assert odd.headers["X-Request-Id"] != "no spaces allowed here"
    # gunicorn writes a request's access line after its response has gone out, from the thread that
    # answered it: a line may come after the client has its answer, and after later requests' lines.
    logged = ("id=abc-123", f"id={made.headers['X-Request-Id']}")
    wait_until(lambda: all(line in service.log() for line in logged), 30, what=f"{logged} in the log")


# ---- boto3's own requests ----------------------------------------------------------------------


class _Proxy(BaseHTTPRequestHandler):
    """Routes SageMaker runtime's /endpoints/<name>/invocations to Clarion's /invocations."""

    target = ""

    def do_POST(self) -> None:  # http.server's name for it
        path = (
            "/invocations"
            if self.path.startswith("/endpoints/") and self.path.endswith("/invocations")
            else self.path
        )
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        host = urlsplit(self.target)
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=120)
        skip = {"host", "content-length", "connection"}
        connection.request(
            "POST", path, body, {k: v for k, v in self.headers.items() if k.lower() not in skip}
        )
        answer = connection.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        return


@pytest.fixture(scope="module")
def runtime(service: Service):
    import boto3
    from botocore.config import Config

    handler = type("Proxy", (_Proxy,), {"target": service.url})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, read_timeout=300),
    )
    yield client
    server.shutdown()


def test_boto3_clarify_request(runtime, service: Service) -> None:
    answer = runtime.invoke_endpoint(
        EndpointName="clarion",
        Body=jsonl({"features": [TEXTS[0]]}, {"features": [TEXTS[2]]}).encode(),
        ContentType="application/jsonlines",
        Accept="application/json",
        EnableExplanations="`true`",
    )
    assert answer["ContentType"] == "application/json"
    body = json.loads(answer["Body"].read())
    assert body["label_headers"] == ["neg", "neu", "pos"] and len(body["explanations"]["kernel_shap"]) == 2
    assert answer["CustomAttributes"].startswith("request_id=")


def test_boto3_batch_lines_with_custom_attributes(runtime) -> None:
    answer = runtime.invoke_endpoint(
        EndpointName="clarion",
        Body=jsonl(*({"text": t} for t in TEXTS)).encode(),
        ContentType="application/jsonlines",
        Accept="application/jsonlines",
        CustomAttributes="explain=true;max_evals=50;granularity=sentence",
    )
    lines = [json.loads(line) for line in answer["Body"].read().decode().splitlines()]
    assert len(lines) == 3 and all(
        line["explanation_parameters"]["granularity"] == "sentence" for line in lines
    )
    assert answer["CustomAttributes"].endswith(";explain=true;max_evals=50;granularity=sentence")
    table = runtime.invoke_endpoint(
        EndpointName="clarion", Body=TEXTS[0].encode(), ContentType="text/plain", Accept="text/csv"
    )
    assert table["ContentType"].startswith("text/csv") and table["Body"].read().decode().count("\n") == 1
