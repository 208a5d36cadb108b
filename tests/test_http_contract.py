"""The HTTP contract over a real socket: `clarion serve` (gunicorn) on a tiny model, every body shape,
and a battery of bad inputs that must each get a JSON 4xx, never a 500 and never a dead worker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.support import (
    Service,
    answering_processes,
    assert_close_to_scale,
    running_service,
    wait_healthy,
    wait_until,
)


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "SERVERLESS": "true",
        "MAX_TEXTS_PER_REQUEST": "8",
        "MAX_TEXT_CHARS": "2000",
        "MAX_EVALS_LIMIT": "1000",
        "MAX_REQUEST_BYTES": "65536",
    }
    with running_service(tmp_path_factory.mktemp("http"), env) as svc:
        wait_healthy(svc)
        yield svc


def test_ping(service: Service) -> None:
    response = service.get("/ping")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["status"] == "healthy"


def test_seed_contract_single_string(service: Service) -> None:
    # curl -d '{"data":"This is a sentence","explain":true}' http://127.0.0.1:8080/invocations
    response = service.post(
        "/invocations",
        data=b'{"data":"This is a sentence","explain":true}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body)[:2] == ["prediction", "truncated"]  # the seed's fields first, in its order
    assert {"label", "score"} == set(body["prediction"][0])
    assert len(body["prediction"]) == 3
    pairs = body["explanation"]
    assert all(isinstance(p[0], str) and isinstance(p[1], dict) for p in pairs)
    assert set(pairs[1][1]) == {"negative", "neutral", "positive"}
    assert len(body["offsets"]) == len(pairs)
    for label, base in body["base_values"].items():
        total = base + sum(p[1][label] for p in pairs)
        assert abs(total - body["model_output"][label]) < 1e-4
    assert body["truncated"] is False


def test_list_gives_list_and_no_content_type_is_json(service: Service) -> None:
    response = requests.post(
        service.url + "/invocations", data=b'{"data":["good film","bad film"]}', headers={"Content-Type": ""}
    )
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list) and len(body) == 2
    assert all("explanation" not in item for item in body)


def test_hugging_face_body(service: Service) -> None:
    response = service.post(
        "/invocations",
        json={"inputs": "the acting was superb", "parameters": {"explain": True, "labels": "predicted"}},
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body["explanation"][1][1]) == {body["prediction"][0]["label"]}


def test_text_plain_is_one_text(service: Service) -> None:
    response = service.post(
        "/invocations", data=b"a plain {not json} text", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 200
    assert isinstance(response.json(), dict)


def test_explain_parameters_are_applied(service: Service) -> None:
    response = service.post(
        "/invocations",
        json={
            "data": "good film",
            "explain": True,
            "max_evals": 10,
            "output": "logit",
            "seed": 3,
            "labels": ["positive"],
        },
    )
    body = response.json()
    parameters = dict(body["explanation_parameters"])
    evaluations = parameters.pop("evaluations")
    assert parameters == {
        "output": "logit",
        "granularity": "token",
        "long_text": "truncate",
        "windows": 1,
        "max_evals": 10,
        "seed": 3,
        "precision": "exact",
        "batch_size": 5,
        "masking": "tokens",
    }
    assert isinstance(evaluations, int) and 2 < evaluations <= 10
    assert set(body["model_output"]) == {"positive"}


def test_faithfulness_on_request_in_the_body_and_in_custom_attributes(service: Service) -> None:
    text = "i loved this film , the acting was superb ."
    plain = service.post("/invocations", json={"data": text, "explain": True, "granularity": "word"}).json()
    assert "faithfulness" not in plain
    asked = service.post(
        "/invocations",
        json={"data": [text], "explain": True, "granularity": "word", "faithfulness": True},
    ).json()[0]
    assert set(asked["faithfulness"]) == set(asked["model_output"]) == {"negative", "neutral", "positive"}
    for measures in asked["faithfulness"].values():
        assert set(measures) == {"comprehensiveness", "sufficiency"}
        assert all(-1 <= value <= 1 for value in measures.values())
    # The attributions are the same ones, up to the last bits: the two requests may run on another
    # backend (exact passes move to onnxruntime once its export is ready) or in other passes.
    assert [unit for unit, _ in asked["explanation"]] == [unit for unit, _ in plain["explanation"]]
    assert_close_to_scale(
        [list(values.values()) for _, values in asked["explanation"]],
        [list(values.values()) for _, values in plain["explanation"]],
        rel=1e-4,
    )
    headed = service.post(
        "/invocations",
        json={"data": text, "explain": True, "granularity": "word"},
        headers={"X-Amzn-SageMaker-Custom-Attributes": "faithfulness=true"},
    ).json()
    assert set(headed["faithfulness"]) == set(asked["faithfulness"])
    for label, measures in asked["faithfulness"].items():
        assert headed["faithfulness"][label] == pytest.approx(measures, rel=1e-4, abs=1e-6)
    refused = service.post("/invocations", json={"data": text, "explain": True, "faithfulness": "maybe"})
    assert refused.status_code == 400 and "faithfulness" in refused.json()["error"]["message"]


def test_single_process_explanation_job_is_finished_at_once(service: Service) -> None:
    response = service.post("/explanations", json={"data": "good film"})
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "succeeded" and job["finished_at"]
    assert job["result"]["explanation"]
    assert job["progress"]["done"] == job["progress"]["total"] > 0
    again = service.get(f"/explanations/{job['id']}")
    assert again.status_code == 200 and again.json() == job
    assert service.get("/explanations/0123456789abcdef").status_code == 404


BAD_INPUTS = [
    # (description, kwargs for requests.post, expected status)
    ("malformed json", {"data": b'{"data": "x"', "headers": {"Content-Type": "application/json"}}, 400),
    # Strings JSON can carry but UTF-8 (and so the tokenizer) cannot: lone surrogates.
    (
        "lone surrogate",
        {"data": b'{"data": "\\ud800"}', "headers": {"Content-Type": "application/json"}},
        400,
    ),
    ("lone surrogate in a list", {"data": b'{"data": ["ok", "a\\udfff"], "explain": true}'}, 400),
    ("lone surrogate, hf body", {"data": b'{"inputs": "\\udc00 x"}'}, 400),
    (
        "surrogate via unicode_escape",
        {"data": b"\\ud800 hi", "headers": {"Content-Type": "text/plain; charset=unicode_escape"}},
        400,
    ),
    # Numbers Python refuses to parse (more than 4,300 digits).
    ("huge integer", {"data": b'{"data": "x", "seed": ' + b"7" * 5000 + b"}"}, 400),
    (
        "huge integer max_evals",
        {"data": b'{"data": "x", "explain": true, "max_evals": ' + b"9" * 4400 + b"}"},
        400,
    ),
    ("NaN max_evals", {"data": b'{"data": "x", "explain": true, "max_evals": NaN}'}, 400),
    ("overflowing float", {"data": b'{"data": "x", "explain": true, "max_evals": 1e999}'}, 400),
    # Charsets that are not text encodings, or that raise odd errors on crafted bytes.
    *[
        (
            f"charset {charset}",
            {"data": b'{"data": "x"}', "headers": {"Content-Type": f"application/json; charset={charset}"}},
            400,
        )
        for charset in ("punycode", "undefined", "base64", "zlib", "rot13", "nonexistent-charset")
    ],
    (
        "charset idna plain",
        {"data": b"\xff\xfe", "headers": {"Content-Type": "text/plain; charset=idna"}},
        400,
    ),
    ("empty body", {"data": b"", "headers": {"Content-Type": "application/json"}}, 400),
    ("json array body", {"json": ["x"]}, 400),
    ("json string body", {"json": "x"}, 400),
    ("json null", {"data": b"null", "headers": {"Content-Type": "application/json"}}, 400),
    ("missing data", {"json": {"explain": True}}, 400),
    ("data and inputs", {"json": {"data": "x", "inputs": "y"}}, 400),
    ("data is a number", {"json": {"data": 5}}, 400),
    ("data is an object", {"json": {"data": {"text": "x"}}}, 400),
    ("list with a number", {"json": {"data": ["ok", 3]}}, 400),
    ("nested list", {"json": {"data": [["x"]]}}, 400),
    ("empty string", {"json": {"data": ""}}, 400),
    ("blank string", {"json": {"data": "   "}}, 400),
    ("empty list", {"json": {"data": []}}, 400),
    ("too many texts", {"json": {"data": ["x"] * 9}}, 400),
    ("text too long", {"json": {"data": "x" * 2001}}, 400),
    ("explain not bool", {"json": {"data": "x", "explain": "yes"}}, 400),
    ("explain as int", {"json": {"data": "x", "explain": 1}}, 400),
    ("max_evals string", {"json": {"data": "x", "explain": True, "max_evals": "500"}}, 400),
    ("max_evals zero", {"json": {"data": "x", "explain": True, "max_evals": 0}}, 400),
    ("max_evals negative", {"json": {"data": "x", "explain": True, "max_evals": -5}}, 400),
    ("max_evals over cap", {"json": {"data": "x", "explain": True, "max_evals": 1001}}, 400),
    ("max_evals float", {"json": {"data": "x", "explain": True, "max_evals": 5.5}}, 400),
    ("max_evals huge", {"json": {"data": "x", "explain": True, "max_evals": 10**30}}, 400),
    ("bad output", {"json": {"data": "x", "explain": True, "output": "odds"}}, 400),
    ("bad labels type", {"json": {"data": "x", "explain": True, "labels": 3}}, 400),
    ("empty labels", {"json": {"data": "x", "explain": True, "labels": []}}, 400),
    ("unknown label", {"json": {"data": "x", "explain": True, "labels": ["happy"]}}, 400),
    ("negative seed", {"json": {"data": "x", "explain": True, "seed": -1}}, 400),
    ("bad precision", {"json": {"data": "x", "explain": True, "precision": "half"}}, 400),
    ("zero batch size", {"json": {"data": "x", "explain": True, "batch_size": 0}}, 400),
    ("batch size over the limit", {"json": {"data": "x", "explain": True, "batch_size": 100000}}, 400),
    ("string batch size", {"json": {"data": "x", "explain": True, "batch_size": "5"}}, 400),
    ("unknown option", {"json": {"data": "x", "max_eval": 10}}, 400),
    ("parameters not object", {"json": {"inputs": "x", "parameters": "explain"}}, 400),
    ("unknown parameter", {"json": {"inputs": "x", "parameters": {"top_k": 2}}}, 400),
    (
        "invalid utf-8",
        {"data": b'{"data": "\xff\xfe"}', "headers": {"Content-Type": "application/json"}},
        400,
    ),
    ("invalid utf-8 text", {"data": b"\xff\xfe\xfa", "headers": {"Content-Type": "text/plain"}}, 400),
    (
        "deep nesting",
        {"data": b"[" * 30000 + b"]" * 30000, "headers": {"Content-Type": "application/json"}},
        400,
    ),
    (
        "too large",
        {"data": b'{"data": "' + b"x" * 70000 + b'"}', "headers": {"Content-Type": "application/json"}},
        413,
    ),
    # Record bodies (JSON Lines, CSV) in Clarify's exchange (Accept: application/json): a record that
    # cannot be read fails the request, naming its line.
    *[
        (
            f"records: {name}",
            {"data": data, "headers": {"Content-Type": kind, "Accept": "application/json"}},
            400,
        )
        for name, kind, data in (
            ("empty jsonlines", "application/jsonlines", b"\n\n"),
            ("jsonlines not json", "application/jsonlines", b'{"features": ["ok"]}\n{oops\n'),
            ("jsonlines no text", "application/jsonlines", b'{"features": [1, 2]}\n'),
            ("jsonlines lone surrogate", "application/jsonlines", b'{"text": "\\ud800"}\n'),
            ("jsonlines huge integer", "application/jsonlines", b'{"text": ' + b"9" * 5000 + b"}\n"),
            ("jsonlines invalid utf-8", "application/jsonlines", b'{"text": "\xff\xfe"}\n'),
            ("csv empty text", "text/csv", b'""\n'),
            ("csv too long", "text/csv", b"x" * 2001 + b"\n"),
        )
    ],
    (
        "a bad Clarify expression",
        {
            "data": b'{"features": ["ok"]}\n',
            "headers": {
                "Content-Type": "application/jsonlines",
                "Accept": "application/json",
                "X-Amzn-SageMaker-Enable-Explanations": "[0",
            },
        },
        400,
    ),
    *[
        (f"time_budget {value!r}", {"json": {"data": "x", "explain": True, "time_budget": value}}, 400)
        for value in (0, -1, "soon", 10**9, "nan", True)
    ],
    (
        "custom attributes bad time_budget",
        {"json": {"data": "x"}, "headers": {"X-Amzn-SageMaker-Custom-Attributes": "time_budget=1e3"}},
        400,
    ),
    (
        "custom attributes bad int",
        {"json": {"data": "x"}, "headers": {"X-Amzn-SageMaker-Custom-Attributes": "seed=x"}},
        400,
    ),
    ("accept nothing we speak", {"json": {"data": "x"}, "headers": {"Accept": "image/png"}}, 406),
    ("xml", {"data": b"<data>x</data>", "headers": {"Content-Type": "application/xml"}}, 415),
    ("image", {"data": b"\x89PNG", "headers": {"Content-Type": "image/png"}}, 415),
    ("multipart", {"files": {"f": ("a.txt", b"x")}}, 415),
]


@pytest.mark.parametrize(("description", "kwargs", "status"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_json_4xx(service: Service, description: str, kwargs: dict, status: int) -> None:
    response = service.post("/invocations", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/invocations", 405),
        ("PUT", "/ping", 405),
        ("GET", "/nowhere", 404),
        ("DELETE", "/invocations", 405),
    ],
)
def test_routing_errors_are_json(service: Service, method: str, path: str, status: int) -> None:
    response = requests.request(method, service.url + path, timeout=10)
    assert response.status_code == status
    assert response.json()["error"]["code"]


def test_service_survives_the_battery(service: Service) -> None:
    assert "Traceback" not in service.log()
    assert service.process.poll() is None
    assert service.get("/ping").status_code == 200
    assert service.post("/invocations", json={"data": "still alive"}).status_code == 200


def test_a_synchronous_explanation_past_the_request_timeout_is_a_clear_503(
    tiny_model_dir: Path, tmp_path: Path
):
    env = {"MODEL_DIR": str(tiny_model_dir), "SERVERLESS": "true", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "1"}
    with running_service(tmp_path, env) as svc:
        wait_healthy(svc)
        texts = [" ".join(["good film but the plot was boring"] * 6) + f" {i}" for i in range(64)]
        started = time.monotonic()
        response = svc.post("/invocations", json={"data": texts, "explain": True, "max_evals": 5000})
        answered_after = time.monotonic() - started
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "explanation_timeout"
        assert "Retry-After" not in response.headers  # the same work would time out again
        # The deadline holds at every pass (not only between rounds): the 503 comes at the timeout,
        # and the dropped work does not hold up the next request.
        assert answered_after < 1 + 2
        started = time.monotonic()
        assert svc.post("/invocations", json={"data": "still serving"}).status_code == 200
        assert time.monotonic() - started < 2


def test_openapi_document_is_valid_and_describes_the_bodies(service: Service) -> None:
    from openapi_spec_validator import validate

    document = service.get("/openapi.json").json()
    validate(document)
    assert {"/ping", "/invocations", "/explanations", "/explanations/{job_id}"} <= set(document["paths"])
    seed = document["components"]["schemas"]["SeedBody"]
    assert {"data", "explain", "max_evals", "labels", "seed", "precision"} <= set(seed["properties"])


def test_inline_jobs_honour_a_raised_max_evals_limit(tiny_model_dir: Path) -> None:
    """In-process (Flask's test client): options are validated once, against the operator's limits."""
    from api.app import create_app
    from shared.serving.service import ClarionService
    from shared.settings import Settings

    settings = Settings(model_dir=str(tiny_model_dir), serverless=True, max_evals_limit=8000, torch_threads=1)
    service = ClarionService(settings)
    service.load()
    client = create_app(settings, service, load_model=False).test_client()
    response = client.post("/explanations", json={"data": "good film", "max_evals": 6000})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["result"]["explanation_parameters"]["max_evals"] == 6000


def test_inline_jobs_are_found_by_every_gunicorn_worker(tiny_model_dir: Path, tmp_path: Path) -> None:
    """No broker and two gunicorn workers: a job run by one is readable from the other."""
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
        "TORCH_THREADS": "1",
        "ACCESS_LOG": "true",  # each line names the process that answered
    }
    with running_service(tmp_path, env) as svc:
        wait_healthy(svc)
        wait_until(lambda: svc.log().count("loaded from") >= 2, 60, what="both workers to load")
        job_ids = [svc.post("/explanations", json={"data": f"good film {i}"}).json()["id"] for i in range(6)]
        statuses = set()

        def both_answered() -> bool:
            """A new connection each time: either process may accept it (a busy one, e.g. still
            building its ONNX graphs, accepts fewer), so GET until both have answered."""
            for job_id in job_ids:
                response = requests.get(f"{svc.url}/explanations/{job_id}", headers={"Connection": "close"})
                statuses.add(response.status_code)
                assert response.json().get("status") == "succeeded", response.text
            return len(answering_processes(svc.log(), "GET", "/explanations/")) == 2

        # both HTTP processes answered GETs (each found jobs the other may have run)
        wait_until(both_answered, 60, 0, "both HTTP processes to answer")
        assert statuses == {200}
        assert requests.get(f"{svc.url}/explanations/{'0' * 32}", timeout=10).status_code == 404
        assert requests.get(f"{svc.url}/explanations/..%2F..%2Fetc%2Fpasswd", timeout=10).status_code == 404


def test_a_time_budget_answers_in_time_with_what_it_reached(service: Service) -> None:
    """Anytime values over HTTP (JSON body and custom attributes): 200 with complete false, the
    evaluations reached, and values that add up; the same request without a budget runs whole."""
    text = "the film was long , slow and yet strangely moving , with a cast that gave it everything . " * 2
    body = {"data": text, "explain": True, "max_evals": 1000, "granularity": "token"}
    response = service.post("/invocations", json={**body, "time_budget": 0.05})
    assert response.status_code == 200, response.text
    parameters = response.json()["explanation_parameters"]
    assert parameters["complete"] is False and 2 <= parameters["evaluations"] < 1000
    answer = response.json()
    for label, base in answer["base_values"].items():
        total = base + sum(values[label] for _, values in answer["explanation"])
        assert total == pytest.approx(answer["model_output"][label], abs=1e-6)
    header = {"X-Amzn-SageMaker-Custom-Attributes": "time_budget=0.05"}
    assert (
        service.post("/invocations", json=body, headers=header).json()["explanation_parameters"]["complete"]
        is False
    )
    whole = service.post("/invocations", json=body).json()["explanation_parameters"]
    assert "complete" not in whole and whole["evaluations"] == 1000


def test_every_documented_path_answers_other_methods_with_405_and_the_documented_allow(
    service: Service,
) -> None:
    """Each path's Allow names exactly the methods the document gives it (with HEAD and OPTIONS
    beside a GET): a route that swallowed another's path (a model named `tiny:predict`) advertised a
    GET the document does not have."""
    import re

    document = service.get("/openapi.json").json()
    model = service.get("/ping").json()["model"]
    checked = 0
    for path, item in document["paths"].items():
        documented = {m.upper() for m in item if m in ("get", "post", "put", "delete", "patch")}
        concrete = re.sub(r"\{model_name\}", model, path)
        concrete = re.sub(r"\{[^}]+\}", "0123456789abcdef0123456789abcdef", concrete)
        for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - documented:
            response = requests.request(method, service.url + concrete, timeout=30)
            allow = {m.strip() for m in response.headers.get("Allow", "").split(",")} - {
                "HEAD",
                "OPTIONS",
                "",
            }
            assert (response.status_code, allow) == (405, documented), (method, concrete)
            checked += 1
    assert checked > 40


def test_every_route_is_in_the_openapi_document_and_every_path_is_a_route(tiny_model_dir: Path) -> None:
    """The app's routes and the document's operations are the same set: a route added without its
    document (or a documented operation no route serves) fails here. Flask's static files (the
    page's assets) are the one route the document leaves out."""
    import re

    from api.app import create_app
    from shared.serving.service import ClarionService
    from shared.settings import Settings

    settings = Settings(model_dir=str(tiny_model_dir), serverless=True, torch_threads=1)
    app = create_app(settings, ClarionService(settings), load_model=False)
    names = {"name": "model_name", "version": "model_version"}  # the converters' argument names

    def path_of(rule: str) -> str:
        return re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: "{" + names.get(m[1], m[1]) + "}", rule)

    routed = {
        (path_of(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    document = app.test_client().get("/openapi.json").get_json()
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    assert routed == documented, {"not documented": routed - documented, "not routed": documented - routed}


def test_a_route_without_its_declared_operation_stops_the_app(tiny_model_dir: Path) -> None:
    """The document's paths are the routes, each described by what its view declares
    (api/operations.py): a route with no declaration, a method its view declares nothing for, or a
    path argument with no parameter makes the check the app factory runs raise."""
    from flask import Blueprint

    from api.app import create_app
    from api.openapi import ping
    from api.operations import UndocumentedRoute, check_declared, documented
    from shared.settings import Settings

    settings = Settings(model_dir=str(tiny_model_dir), serverless=True, torch_threads=1)
    check_declared(create_app(settings, load_model=False))  # as built, every route declares its own

    def plain() -> str:
        return "x"

    @documented(get=ping)
    def declared(thing: str = "") -> str:
        return thing

    cases = [
        ("/plain", plain, ["GET"], "declares no OpenAPI operation"),
        ("/declared", declared, ["GET", "POST"], "declares nothing for post"),
        ("/declared/<thing>", declared, ["GET"], "declares nothing for the parameter thing"),
    ]
    for rule, view, methods, message in cases:
        app = create_app(settings, load_model=False)
        extra = Blueprint("extra", __name__)
        extra.add_url_rule(rule, view_func=view, methods=methods)
        app.register_blueprint(extra)
        with pytest.raises(UndocumentedRoute, match=message):
            check_declared(app)
