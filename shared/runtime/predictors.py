"""The protocols a remote model speaks: KServe V1 and V2 (Open Inference Protocol) over HTTP, and a
SageMaker endpoint through boto3. Each turns a batch of texts into their scores (texts x labels).

Every failure is a PredictorError naming the predictor (a 502), or PredictorTimeout (a 504); a
call is retried only where that is safe: predict is idempotent, and a connection that failed (or was
dropped before an answer) is tried again, at most REMOTE_RETRIES times. A call that timed out is not.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from shared.errors import PredictorError, PredictorTimeout
from shared.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
_SNIPPET = 300  # characters of a bad answer quoted in the error


class Predictor(Protocol):
    """A remote model, as Clarion calls it."""

    name: str  # what errors and /ping call it: its URL

    def scores(self, texts: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        """The texts' scores (texts x labels, float32), each column one of `labels`."""
        ...

    def labels(self) -> list[str] | None:
        """The label names the predictor declares (V2's metadata), or None."""
        ...

    def probe_labels(self) -> list[str] | None:
        """The label names one answer holds (one text scored), or None where it holds only numbers."""
        ...

    def ready(self) -> str | None:
        """None when it answers that it is ready; else why not."""
        ...


def predictor_for(settings: Settings) -> Predictor:
    url = settings.model_url
    assert url is not None
    if url.startswith("sagemaker://"):
        return SageMakerPredictor(settings)
    if "/v2/models/" in url:
        return V2Predictor(settings)
    return V1Predictor(settings)


def _retrying(
    name: str, retries: int, call: Callable[[], T], retryable: tuple[type[BaseException], ...]
) -> T:
    """`call()`, again after a connection error (at most `retries` more times, backing off)."""
    for attempt in range(retries + 1):
        try:
            return call()
        except retryable as exc:
            if attempt == retries:
                raise PredictorError(
                    f"predictor {name} could not be reached ({attempt + 1} tries): {exc}"
                ) from None
            log.warning("predictor %s: %s; trying again", name, exc)
            time.sleep(min(2.0, 0.1 * 2**attempt))
    raise AssertionError("unreachable")


class _Http:
    """JSON over HTTP with a bounded pool, a timeout per call and safe retries."""

    def __init__(self, settings: Settings, name: str) -> None:
        import urllib3

        self.name = name
        self._retries = settings.remote_retries
        self._timeout = urllib3.Timeout(
            connect=min(10.0, settings.remote_timeout_s), read=settings.remote_timeout_s
        )
        self._pool = urllib3.PoolManager(maxsize=settings.remote_concurrency + 2, block=False, retries=False)

    def call(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON body or the raw text); PredictorTimeout, or PredictorError when it
        cannot be reached."""
        from urllib3.exceptions import (
            ConnectTimeoutError,
            NewConnectionError,
            ProtocolError,
            ReadTimeoutError,
            TimeoutError,
        )

        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"

        def once() -> Any:
            return self._pool.request(method, url, body=data, headers=headers, timeout=self._timeout)

        try:
            response = _retrying(
                self.name, self._retries, once, (NewConnectionError, ConnectTimeoutError, ProtocolError)
            )
        except (ReadTimeoutError, TimeoutError):
            seconds = self._timeout.read_timeout
            raise PredictorTimeout(
                f"predictor {self.name} did not answer within REMOTE_TIMEOUT ({seconds:g} s)"
            ) from None
        text = response.data.decode("utf-8", errors="replace")
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    def answer(self, method: str, url: str, body: Any = None) -> Any:
        """The JSON body of a 2xx answer; anything else a PredictorError naming the predictor."""
        status, answer = self.call(method, url, body)
        if status in (408, 504):
            raise PredictorTimeout(f"predictor {self.name} timed out ({status}): {_snippet(answer)}")
        if not 200 <= status < 300:
            raise PredictorError(f"predictor {self.name} answered {status}: {_snippet(answer)}")
        if isinstance(answer, str):
            raise PredictorError(
                f"predictor {self.name} answered something that is not JSON: {_snippet(answer)}"
            )
        return answer


def _snippet(answer: Any) -> str:
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


class V2Predictor:
    """The Open Inference Protocol: texts as one BYTES input, scores from an FP32 output."""

    def __init__(self, settings: Settings) -> None:
        assert settings.model_url is not None
        self.name = settings.model_url
        self._url = settings.model_url
        self._http = _Http(settings, self.name)
        self._output = settings.remote_output
        self._input = "text"  # the metadata's first BYTES input, once read

    def labels(self) -> list[str] | None:
        metadata = self._http.answer("GET", self._url)
        if not isinstance(metadata, dict):
            raise PredictorError(
                f"predictor {self.name}: its metadata is not a JSON object: {_snippet(metadata)}"
            )
        inputs = [i for i in metadata.get("inputs") or [] if isinstance(i, dict)]
        self._input = next(
            (i["name"] for i in inputs if i.get("datatype") == "BYTES" and "name" in i), "text"
        )
        labels = (metadata.get("parameters") or {}).get("labels")
        if isinstance(labels, str):
            try:
                labels = json.loads(labels)
            except ValueError:
                labels = [part.strip() for part in labels.split(",")]
        if isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels):
            return labels
        return None

    def probe_labels(self) -> list[str] | None:
        return None  # an FP32 tensor holds no names

    def ready(self) -> str | None:
        status, answer = self._http.call("GET", self._url + "/ready")
        if status == 200 and not (isinstance(answer, dict) and answer.get("ready") is False):
            return None
        return f"{self._url}/ready answered {status}: {_snippet(answer)}"

    def scores(self, texts: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        body: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "inputs": [
                {"name": self._input, "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}
            ],
        }
        if self._output:
            body["outputs"] = [{"name": self._output}]
        answer = self._http.answer("POST", self._url + "/infer", body)
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outputs, list):
            raise PredictorError(f"predictor {self.name}: an answer without outputs: {_snippet(answer)}")
        found = [
            o
            for o in outputs
            if isinstance(o, dict)
            and (o.get("name") == self._output if self._output else o.get("datatype") in ("FP32", "FP64"))
        ]
        if not found:
            wanted = f"output {self._output!r}" if self._output else "an FP32 output"
            raise PredictorError(f"predictor {self.name}: no {wanted} in its answer: {_snippet(answer)}")
        return _matrix(self.name, found[0].get("data"), len(texts), labels)


class V1Predictor:
    """KServe V1: `{"instances": [...]}` to `:predict`, each prediction a text's scores."""

    def __init__(self, settings: Settings) -> None:
        assert settings.model_url is not None
        self.name = settings.model_url
        self._url = settings.model_url
        self._http = _Http(settings, self.name)

    def labels(self) -> list[str] | None:
        return None  # V1 has no metadata

    def probe_labels(self) -> list[str] | None:
        return _names_in(self.name, self._predictions(["Clarion checks the labels"])[0])

    def ready(self) -> str | None:
        status, answer = self._http.call("GET", self._url)
        if status == 200 and not (isinstance(answer, dict) and answer.get("ready") is False):
            return None
        return f"{self._url} answered {status}: {_snippet(answer)}"

    def _predictions(self, texts: Sequence[str]) -> list[Any]:
        answer = self._http.answer("POST", self._url + ":predict", {"instances": list(texts)})
        predictions = answer.get("predictions") if isinstance(answer, dict) else None
        if not isinstance(predictions, list) or len(predictions) != len(texts):
            raise PredictorError(
                f'predictor {self.name}: expected {{"predictions": [...]}} with {len(texts)} '
                f"prediction(s), got {_snippet(answer)}"
            )
        return predictions

    def scores(self, texts: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        return _rows(self.name, self._predictions(texts), labels)


class SageMakerPredictor:
    """A SageMaker endpoint (boto3's sagemaker-runtime `invoke_endpoint`): texts as the content type
    says (JSON `{"inputs": [...]}`, JSON Lines `{"features": [text]}` per line as Clarify sends, or
    CSV), the scores and label names found by JMESPath (REMOTE_SCORES_PATH, REMOTE_LABELS_PATH, as
    Clarify's `probability` and `label_headers`) in the answer, or its predictions as V1 reads them."""

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        assert settings.model_url is not None
        self.name = settings.model_url
        self._endpoint = settings.model_url[len("sagemaker://") :]
        self._content_type = settings.remote_content_type
        self._scores_path = settings.remote_scores_path
        self._labels_path = settings.remote_labels_path
        self._retries = settings.remote_retries
        self._last_error: str | None = None
        self._client = boto3.client(
            "sagemaker-runtime",
            config=Config(
                connect_timeout=min(10.0, settings.remote_timeout_s),
                read_timeout=settings.remote_timeout_s,
                retries={"total_max_attempts": 1},  # retried here, only where it is safe
                max_pool_connections=settings.remote_concurrency + 2,
            ),
        )

    def labels(self) -> list[str] | None:
        return None

    def probe_labels(self) -> list[str] | None:
        answer = self._invoke(["Clarion checks the labels"])
        if self._labels_path:
            import jmespath

            found = jmespath.search(self._labels_path, answer[0] if self._per_line else answer)
            if found and isinstance(found, list) and isinstance(found[0], list):
                found = found[0]  # a name list per record: the first's
            if not (isinstance(found, list) and found and all(isinstance(x, str) for x in found)):
                raise PredictorError(
                    f"predictor {self.name}: REMOTE_LABELS_PATH {self._labels_path!r} found {found!r}, "
                    "not a list of label names"
                )
            return found
        return _names_in(self.name, self._predictions(answer, 1)[0])

    def ready(self) -> str | None:
        return self._last_error  # no readiness route on the runtime API: the last call's outcome

    @property
    def _per_line(self) -> bool:
        return self._content_type in ("application/jsonlines", "application/x-jsonlines")

    def _invoke(self, texts: Sequence[str]) -> Any:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        if self._per_line:
            body = "".join(json.dumps({"features": [t]}) + "\n" for t in texts)
        elif self._content_type == "text/csv":
            import csv
            import io

            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows([t] for t in texts)
            body = out.getvalue()
        else:
            body = json.dumps({"inputs": list(texts)})

        def once() -> Any:
            return self._client.invoke_endpoint(
                EndpointName=self._endpoint,
                Body=body.encode(),
                ContentType=self._content_type,
                Accept="application/jsonlines" if self._per_line else "application/json",
            )

        try:
            response = _retrying(
                self.name,
                self._retries,
                once,
                (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError),
            )
            text = response["Body"].read().decode("utf-8", errors="replace")
        except ReadTimeoutError:
            self._last_error = "timed out"
            raise PredictorTimeout(f"predictor {self.name} did not answer within REMOTE_TIMEOUT") from None
        except ClientError as exc:
            self._last_error = str(exc)
            raise PredictorError(f"predictor {self.name} answered an error: {exc}") from None
        except PredictorError as exc:
            self._last_error = exc.message
            raise
        try:
            answer = (
                [json.loads(line) for line in text.splitlines() if line.strip()]
                if self._per_line
                else json.loads(text)
            )
        except ValueError:
            self._last_error = "not JSON"
            raise PredictorError(
                f"predictor {self.name} answered something that is not JSON: {_snippet(text)}"
            ) from None
        self._last_error = None
        return answer

    def _predictions(self, answer: Any, count: int) -> list[Any]:
        if isinstance(answer, dict) and "predictions" in answer:
            answer = answer["predictions"]
        if not isinstance(answer, list) or len(answer) != count:
            raise PredictorError(
                f"predictor {self.name}: expected {count} prediction(s), got {_snippet(answer)}"
            )
        return answer

    def scores(self, texts: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        answer = self._invoke(texts)
        if not self._scores_path:
            return _rows(self.name, self._predictions(answer, len(texts)), labels)
        import jmespath

        if self._per_line:
            found: Any = [jmespath.search(self._scores_path, record) for record in answer]
        else:
            found = jmespath.search(self._scores_path, answer)
        return _matrix(self.name, found, len(texts), labels)


def _matrix(name: str, data: Any, count: int, labels: Sequence[str]) -> np.ndarray:
    """Numbers (flat, or a list per text) as texts x labels, or a PredictorError that says why not."""
    try:
        values = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        raise PredictorError(f"predictor {name}: scores that are not numbers: {_snippet(data)}") from None
    if values.size != count * len(labels):
        raise PredictorError(
            f"predictor {name}: {values.size} score(s) for {count} text(s) of {len(labels)} label(s) "
            f"{list(labels)}: {_snippet(data)}"
        )
    values = values.reshape(count, len(labels))
    if not np.isfinite(values).all():
        raise PredictorError(f"predictor {name}: scores that are not finite: {_snippet(data)}")
    return values


def _rows(name: str, predictions: Sequence[Any], labels: Sequence[str]) -> np.ndarray:
    """Each prediction as its scores in `labels`' order: a list of numbers, {label: score},
    [{"label", "score"}, ...] (transformers' pipeline with top_k=None), or Clarion's own result
    ({"prediction": [...]})."""
    out = np.empty((len(predictions), len(labels)), dtype=np.float32)
    for i, prediction in enumerate(predictions):
        by_name = _by_name(prediction)
        if by_name is None:
            out[i] = _matrix(name, prediction, 1, labels)[0]
            continue
        missing = [label for label in labels if label not in by_name]
        if missing:
            raise PredictorError(
                f"predictor {name}: prediction {i} has no score for {missing} (it scores {list(by_name)}): "
                "every label's score is needed"
            )
        out[i] = [by_name[label] for label in labels]
    if not np.isfinite(out).all():
        raise PredictorError(f"predictor {name}: scores that are not finite")
    return out


def _by_name(prediction: Any) -> dict[str, float] | None:
    """A prediction's scores by label name, or None where it is a bare list of numbers."""
    if isinstance(prediction, dict) and isinstance(prediction.get("prediction"), list):
        prediction = prediction["prediction"]  # Clarion's result
    if (
        isinstance(prediction, dict)
        and prediction
        and all(isinstance(v, (int, float)) for v in prediction.values())
    ):
        return {str(k): float(v) for k, v in prediction.items()}
    if (
        isinstance(prediction, list)
        and prediction
        and all(isinstance(p, dict) and "label" in p and "score" in p for p in prediction)
    ):
        try:
            return {str(p["label"]): float(p["score"]) for p in prediction}
        except (TypeError, ValueError):
            return None
    return None


def _names_in(name: str, prediction: Any) -> list[str] | None:
    by_name = _by_name(prediction)
    return list(by_name) if by_name is not None else None


@dataclass(frozen=True)
class PredictorStatus:
    """What /ping says of the predictor."""

    url: str
    ready: bool
    error: str | None = None

    def report(self) -> dict[str, Any]:
        return {"url": self.url, "ready": self.ready, **({"error": self.error} if self.error else {})}
