"""S3_ALLOWED_PREFIXES: analyses read and write only inside them. The key rules on a table of tricks;
then a real S3-compatible server (moto, with IAM enforced) on loopback, two buckets, a counting proxy
in front of it that sees every request Clarion makes, and a real `clarion serve` over real HTTP."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from shared.errors import ConfigurationError, Forbidden, InvalidRequest, PayloadTooLarge
from shared.settings import Settings
from shared.storage.s3 import check_allowed, read_object, split_uri, write_objects
from tests.support import Service, free_port, running_service, s3_client, wait_healthy

ALLOWED, OTHER = "clarion-a", "clarion-b"
PREFIXES = f"s3://{ALLOWED}/in/,s3://{ALLOWED}/out/"
# A file of the service's own model (MODEL_PATH is its folder): same bucket, outside the prefixes, and
# named as an analysis input may be (.txt), so only the prefixes refuse it.
MODEL_KEY = "models/tiny/vocab.txt"
ROWS = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in ["good film", "bad plot", "fine"] * 2)

# ---- the rules, before any S3 call ----------------------------------------------------------------

TRICKS = [
    "s3://a-bucket/in/../secret.jsonl",
    "s3://a-bucket/in/./x.jsonl",
    "s3://a-bucket/../x.jsonl",
    "s3://a-bucket/in//x.jsonl",
    "s3://a-bucket//in/x.jsonl",
    "s3://a-bucket/in/%2e%2e/x.jsonl",
    "s3://a-bucket/in/%2E%2E/x.jsonl",
    "s3://a-bucket/in%2f..%2fsecret.jsonl",
    "s3://a-bucket/in/%252e%252e/x.jsonl",
    "s3://a-bucket/in\\..\\secret.jsonl",
    "s3://a-bucket/in/x\x00.jsonl",
    "s3://a-bucket/in/x\n.jsonl",
    "s3://a-bucket/in/x\x7f.jsonl",
    "s3://a-bucket/in/x\x85.jsonl",
    "s3://a-bucket/in/..",
    "s3://a-bucket/in/.",
    "s3://A-Bucket/in/x.jsonl",
    "s3://a_bucket/in/x.jsonl",
    "s3://ab/in/x.jsonl",
    "s3:/a-bucket/in/x.jsonl",
    "S3://a-bucket/in/x.jsonl",
    "s3://a-bucket",
    "s3://a-bucket/",
    "s3://a-bucket/" + "k" * 1025,
    "https://a-bucket.s3.amazonaws.com/in/x.jsonl",
]


@pytest.mark.parametrize("uri", TRICKS)
def test_a_key_that_could_mean_another_is_a_400(uri: str) -> None:
    with pytest.raises(InvalidRequest):
        check_allowed(uri, ("s3://a-bucket/",))


# As allowed prefixes: all but the two that are a bucket alone (valid) and the over-long key.
PREFIX_TRICKS = [t for t in TRICKS if t.count("/") > 2 and not t.endswith("/") and len(t) < 1000]


@pytest.mark.parametrize("uri", PREFIX_TRICKS)
def test_the_same_tricks_are_refused_as_an_allowed_prefix(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="S3_ALLOWED_PREFIXES"):
        Settings.from_env({"S3_ALLOWED_PREFIXES": f"s3://fine-bucket/,{uri}"})


@pytest.mark.parametrize(
    ("uri", "folder", "inside"),
    [
        ("s3://a-bucket/data/x.jsonl", False, True),
        ("s3://a-bucket/data/deep/x.jsonl", False, True),
        ("s3://a-bucket/database/x.jsonl", False, False),  # `data` is a folder, not a string prefix
        ("s3://a-bucket/dat/x.jsonl", False, False),
        ("s3://a-bucket/x.jsonl", False, False),
        ("s3://b-bucket/data/x.jsonl", False, False),
        ("s3://a-bucket-2/data/x.jsonl", False, False),
        ("s3://a-bucket/data", True, True),  # an output prefix: the allowed folder itself
        ("s3://a-bucket/data/run1", True, True),
        ("s3://a-bucket/data/run1/", True, True),
        ("s3://a-bucket/database", True, False),
        ("s3://a-bucket/", True, False),
        ("s3://a-bucket", True, False),
    ],
)
def test_inside_means_the_same_bucket_and_under_the_folder(uri: str, folder: bool, inside: bool) -> None:
    prefixes = Settings.from_env({"S3_ALLOWED_PREFIXES": "s3://a-bucket/data"}).s3_allowed_prefixes
    assert prefixes == ("s3://a-bucket/data/",)
    if inside:
        assert check_allowed(uri, prefixes, folder=folder)[0] == "a-bucket"
    else:
        with pytest.raises(Forbidden, match="S3_ALLOWED_PREFIXES"):
            check_allowed(uri, prefixes, folder=folder)


def test_a_whole_bucket_can_be_allowed_and_none_allows_nothing() -> None:
    prefixes = Settings.from_env(
        {"S3_ALLOWED_PREFIXES": " s3://a-bucket , s3://b-bucket/x/ "}
    ).s3_allowed_prefixes
    assert prefixes == ("s3://a-bucket/", "s3://b-bucket/x/")
    assert split_uri("s3://a-bucket/any/where.csv") == check_allowed("s3://a-bucket/any/where.csv", prefixes)
    assert Settings.from_env({}).s3_allowed_prefixes == ()
    with pytest.raises(Forbidden, match="S3_ALLOWED_PREFIXES, none are set"):
        check_allowed("s3://a-bucket/any/where.csv", ())


# ---- a real S3 server, and every request Clarion sends it ------------------------------------------


class CountingProxy:
    """A plain HTTP proxy in front of the S3 server that remembers each request's method and path."""

    def __init__(self, upstream_port: int) -> None:
        self.requests: list[tuple[str, str]] = []
        self.ranges: list[str | None] = []
        self.head_size: int | None = None  # when set, every HEAD reports this size (a store that lies)
        self.cut_after: int | None = None  # when set, a GET's body stops after this many bytes (a reset)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                proxy.requests.append((self.command, self.path))
                proxy.ranges.append(self.headers.get("Range"))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                length = str(len(data))
                if self.command == "HEAD":
                    length = (
                        str(proxy.head_size)
                        if proxy.head_size is not None
                        else answer.getheader("Content-Length", "0")
                    )
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command == "GET" and proxy.cut_after is not None:
                    self.wfile.write(data[: proxy.cut_after])  # promised len(data), then the line drops
                    self.close_connection = True
                elif self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def buckets_asked(self) -> set[str]:
        return {path.lstrip("/").split("/")[0].split("?")[0] for _, path in self.requests}


def _iam_user(endpoint: str, name: str, statements: list[dict]) -> dict[str, str]:
    """A user with exactly these permissions; its keys as the AWS_* variables."""
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": statements}
    iam.put_user_policy(UserName=name, PolicyName="only-this", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


class S3:
    def __init__(self, endpoint: str, proxy: CountingProxy, service_keys: dict, admin_keys: dict) -> None:
        self.endpoint, self.proxy, self.service_keys = endpoint, proxy, service_keys
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=admin_keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=admin_keys["AWS_SECRET_ACCESS_KEY"],
        )

    def env(self) -> dict[str, str]:
        """What Clarion needs to reach the server through the proxy, as the service's IAM user."""
        return {"AWS_ENDPOINT_URL": self.proxy.url, "AWS_DEFAULT_REGION": "us-east-1", **self.service_keys}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    setup = s3_client(endpoint)
    for bucket in (ALLOWED, OTHER):
        setup.create_bucket(Bucket=bucket)
    for bucket, key in [(ALLOWED, "in/reviews.jsonl"), (OTHER, "in/reviews.jsonl"), (ALLOWED, MODEL_KEY)]:
        setup.put_object(Bucket=bucket, Key=key, Body=ROWS)
    setup.put_object(Bucket=ALLOWED, Key="in/secret/reviews.jsonl", Body=ROWS)
    # The service's own credentials may not read in/secret/ nor write out/denied/: S3 itself says no.
    service_keys = _iam_user(
        endpoint,
        "clarion",
        [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{ALLOWED}/in/secret/*"},
            {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{ALLOWED}/out/denied/*"},
        ],
    )
    admin_keys = _iam_user(endpoint, "admin", [{"Effect": "Allow", "Action": "*", "Resource": "*"}])
    # From now on moto checks every request's credentials and policies (moto-wide: undone below).
    before = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).json()
    proxy = CountingProxy(port)
    try:
        yield S3(endpoint, proxy, service_keys, admin_keys)
    finally:
        requests.post(
            f"{endpoint}/moto-api/reset-auth",
            data=before["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"].encode(),
            timeout=10,
        )
        proxy.server.shutdown()
        server.stop()


def _serve(tmp: Path, model_dir: Path, env: dict[str, str]) -> Any:
    return running_service(
        tmp,
        {
            "MODEL_DIR": str(model_dir),
            # The model's S3 location is declared too; MODEL_DIR wins, and analyses may not read it.
            "BUCKET_NAME": ALLOWED,
            "MODEL_PATH": MODEL_KEY.rsplit("/", 1)[0],
            "TORCH_THREADS": "1",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
            **env,
        },
    )


@pytest.fixture(scope="module")
def scoped(tiny_model_dir: Path, s3: S3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with _serve(
        tmp_path_factory.mktemp("s3-scoped"), tiny_model_dir, {**s3.env(), "S3_ALLOWED_PREFIXES": PREFIXES}
    ) as service:
        wait_healthy(service)
        yield service


def analyze(service: Service, spec: dict[str, str]) -> requests.Response:
    return requests.post(f"{service.url}/analyses", json=spec, params={"max_evals": "20"}, timeout=300)


def test_without_prefixes_or_credentials_every_s3_location_is_a_403_before_any_call(
    tiny_model_dir: Path, s3: S3, tmp_path: Path
) -> None:
    no_credentials = {
        "AWS_ENDPOINT_URL": s3.proxy.url,
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with _serve(tmp_path, tiny_model_dir, no_credentials) as service:
        wait_healthy(service)
        s3.proxy.requests.clear()
        for spec in [
            {"input": f"s3://{ALLOWED}/in/reviews.jsonl"},
            {"input": f"s3://{ALLOWED}/{MODEL_KEY}"},
            {"input": f"s3://{ALLOWED}/in/reviews.jsonl", "output": f"s3://{ALLOWED}/out/x/"},
        ]:
            response = analyze(service, spec)
            assert response.status_code == 403, response.text
            assert "S3_ALLOWED_PREFIXES" in response.json()["error"]["message"]
            assert "Retry-After" not in response.headers
    assert s3.proxy.requests == []


def test_an_input_in_another_bucket_is_a_403_and_never_asked_for(scoped: Service, s3: S3) -> None:
    s3.proxy.requests.clear()
    response = analyze(scoped, {"input": f"s3://{OTHER}/in/reviews.jsonl"})
    assert response.status_code == 403, response.text
    assert "S3_ALLOWED_PREFIXES" in response.json()["error"]["message"]
    assert s3.proxy.requests == []
    allowed = analyze(scoped, {"input": f"s3://{ALLOWED}/in/reviews.jsonl"})
    assert allowed.status_code == 200, allowed.text
    assert s3.proxy.buckets_asked() == {ALLOWED}  # the proxy does see what Clarion reads


def test_an_output_in_another_bucket_is_a_403_before_the_input_is_read(scoped: Service, s3: S3) -> None:
    s3.proxy.requests.clear()
    for output in [f"s3://{OTHER}/out/run/", f"s3://{ALLOWED}/outside/run/", f"s3://{ALLOWED}/out/../run/"]:
        spec = {"input": f"s3://{ALLOWED}/in/reviews.jsonl", "output": output}
        response = analyze(scoped, spec)
        assert response.status_code in (400, 403), response.text
        assert response.status_code == 403 or ".." in response.json()["error"]["message"]
    assert s3.proxy.requests == []


def test_the_models_own_location_is_not_readable_outside_the_prefixes(scoped: Service, s3: S3) -> None:
    s3.proxy.requests.clear()
    response = analyze(scoped, {"input": f"s3://{ALLOWED}/{MODEL_KEY}"})
    assert response.status_code == 403, response.text
    assert s3.proxy.requests == []


def test_inside_the_prefixes_it_reads_and_writes_there(scoped: Service, s3: S3) -> None:
    spec = {"input": f"s3://{ALLOWED}/in/reviews.jsonl", "output": f"s3://{ALLOWED}/out/run1"}
    response = analyze(scoped, spec)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    listed = s3.client.list_objects_v2(Bucket=ALLOWED, Prefix="out/")["Contents"]
    assert {o["Key"] for o in listed} == {
        "out/run1/analysis.json",
        "out/run1/records.jsonl",
        "out/run1/report.html",
    }
    assert s3.client.list_objects_v2(Bucket=OTHER, Prefix="out/").get("KeyCount") == 0


def test_missing_and_forbidden_objects_get_the_same_404(scoped: Service) -> None:
    answers = []
    for uri in [f"s3://{ALLOWED}/in/secret/reviews.jsonl", f"s3://{ALLOWED}/in/missing.jsonl"]:
        response = analyze(scoped, {"input": uri})
        assert response.status_code == 404, response.text
        assert "Retry-After" not in response.headers
        error = response.json()["error"]
        answers.append({**error, "message": error["message"].replace(uri, "<uri>")})
    assert answers[0] == answers[1]
    assert "no such object, or the service may not read it" in answers[0]["message"]


def test_an_output_s3_refuses_fails_the_analysis_with_a_404(scoped: Service) -> None:
    spec = {"input": f"s3://{ALLOWED}/in/reviews.jsonl", "output": f"s3://{ALLOWED}/out/denied/"}
    response = analyze(scoped, spec)
    assert response.status_code == 404, response.text
    assert "the service may not write there" in response.json()["error"]["message"]
    assert "Retry-After" not in response.headers


# ---- in-process: the worker's write path and the read cap ------------------------------------------


@pytest.fixture
def as_service(s3: S3, monkeypatch: pytest.MonkeyPatch) -> CountingProxy:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3.proxy.requests.clear()
    return s3.proxy


def test_the_write_path_checks_the_prefixes_again(as_service: CountingProxy) -> None:
    files = {"analysis.json": b"{}"}
    types = {"analysis.json": "application/json"}
    with pytest.raises(Forbidden, match="S3_ALLOWED_PREFIXES"):
        write_objects(f"s3://{OTHER}/out/x/", files, types, (f"s3://{ALLOWED}/out/",))
    assert as_service.requests == []
    write_objects(f"s3://{ALLOWED}/out/y", files, types, (f"s3://{ALLOWED}/out/",))
    assert as_service.requests == [("PUT", f"/{ALLOWED}/out/y/analysis.json")]


def test_a_read_never_takes_more_than_one_byte_over_the_limit(as_service: CountingProxy, s3: S3) -> None:
    allowed = (f"s3://{ALLOWED}/in/",)
    uri = f"s3://{ALLOWED}/in/reviews.jsonl"
    assert read_object(uri, len(ROWS), allowed) == ROWS
    assert as_service.ranges[-1] == f"bytes=0-{len(ROWS)}"
    as_service.head_size = 5  # the object looks small; only the capped read can tell
    try:
        with pytest.raises(PayloadTooLarge, match="ANALYSIS_MAX_BYTES"):
            read_object(uri, 20, allowed)
    finally:
        as_service.head_size = None
    assert as_service.ranges[-1] == "bytes=0-20"
    s3.client.put_object(Bucket=ALLOWED, Key="in/empty.txt", Body=b"")
    assert read_object(f"s3://{ALLOWED}/in/empty.txt", 10, allowed) == b""


def test_a_download_cut_short_is_a_503_not_a_smaller_input(as_service: CountingProxy) -> None:
    from shared.errors import StorageUnavailable

    as_service.cut_after = len(ROWS) // 2
    try:
        with pytest.raises(StorageUnavailable):
            read_object(f"s3://{ALLOWED}/in/reviews.jsonl", 10_000, (f"s3://{ALLOWED}/in/",))
    finally:
        as_service.cut_after = None


def test_no_credentials_is_a_403_and_a_key_s3_does_not_know_a_503_each_saying_so(
    as_service: CountingProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same for every object (so it tells nothing of what exists): no credentials at all is a
    deployment without S3 access, a 4xx no retry changes (schemathesis' not_a_server_error found it
    a 503); a key S3 does not know is the deployment's fault, a 503."""
    from shared.errors import NoStorageAccess, StorageUnavailable

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # the session of earlier tests holds their keys
    allowed = (f"s3://{ALLOWED}/in/",)
    for key in ("in/reviews.jsonl", "in/no-such.jsonl"):
        with pytest.raises(NoStorageAccess, match="no S3 access") as refused:
            read_object(f"s3://{ALLOWED}/{key}", 1000, allowed)
        assert refused.value.code == "no_s3_access"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN12")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret-anyone-issued")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    for key in ("in/reviews.jsonl", "in/no-such.jsonl"):
        with pytest.raises(StorageUnavailable, match="credentials, clock or region: InvalidAccessKeyId"):
            read_object(f"s3://{ALLOWED}/{key}", 1000, allowed)


def test_only_a_store_out_of_reach_is_a_503(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.errors import StorageUnavailable

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    with pytest.raises(StorageUnavailable, match="unavailable"):
        read_object(f"s3://{ALLOWED}/in/reviews.jsonl", 1000, (f"s3://{ALLOWED}/in/",))
