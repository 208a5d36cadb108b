"""One call to a Clarion server over HTTP, retried as the RetryPolicy says: the only module of the
client that touches the network.

A replayable request is one whose repeat cannot change what the server holds: GETs, a synchronous
POST /invocations (a computation that stores nothing), and POST /explanations and /analyses, which
carry one Idempotency-Key for all their tries (the server answers a repeat with the job the first
made). A replayable request is tried again after a connection failure, a 503 or a 429. Any other
request (a DELETE: a second one removes the job the first one cancelled) is tried again only where
the server surely did nothing: it never got the whole request, or a 429 turned it away; otherwise it
raises (`ConnectionFailed` with `sent=True`, or the 503's APIError) instead of being duplicated.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from clarion_client.errors import APIError, ConnectionFailed, TimedOut, UnexpectedResponse, api_error
from clarion_client.retries import NOT_RETRIED_CODES, RETRIED_STATUSES, RetryPolicy, retry_after_seconds
from clarion_client.version import __version__, check_api_version

JSON = "application/json"
PING = "/ping"
IDEMPOTENCY_KEY = "Idempotency-Key"
USER_AGENT = f"clarion-client/{__version__}"


@dataclass(frozen=True)
class Response:
    """A server's answer: its status, headers and whole body."""

    url: str
    status: int
    headers: Message = field(repr=False)
    body: bytes = field(repr=False)

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise UnexpectedResponse(
                f"{self.url} answered {self.status} with a body that is not JSON: {self.body[:200]!r}"
            ) from None


class Transport:
    """Sends requests to one server with its API key, timeout and retry policy."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout: float,
        retry: RetryPolicy,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"{url!r}: a Clarion server's URL starts with http:// or https://")
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retry = retry
        self._sleep = sleep
        self._version_checked = False  # once per server: the first call asks /ping first

    def send(
        self,
        method: str,
        path: str,
        *,
        replayable: bool,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str = JSON,
        query: Mapping[str, str] | None = None,
        timeout: float | None = None,
        answers: Collection[int] = (),
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """The answer to one call (retried as the module docstring says). A status of 400 or more
        raises its APIError, unless it is one of `answers` (a /ping's 503 is a state, not an error).
        The first call to a server checks its API version (`check_api_version`)."""
        if not self._version_checked and path != PING:
            self._check_version(timeout)
        response = self._send(
            method,
            path,
            replayable=replayable,
            body=body,
            content_type=content_type,
            accept=accept,
            query=query,
            timeout=timeout,
            answers=answers,
            headers=headers,
        )
        if path == PING and not self._version_checked:
            self._check(response)
        return response

    def _check_version(self, timeout: float | None) -> None:
        """Ask /ping which API the server speaks. An answer that is not a Clarion's (a gateway's 503
        page, a 404 where only /invocations is exposed) leaves the check to a later call and lets this
        one go on: its own answer, and its own retries, say what is wrong."""
        try:
            ping = self._send("GET", PING, replayable=True, body=None, content_type=None, accept=JSON,
                              query=None, timeout=timeout, answers=(503,), headers=None)  # fmt: skip
        except APIError:
            return
        self._check(ping)

    def _check(self, ping: Response) -> None:
        try:
            answer = json.loads(ping.body)
        except ValueError:
            return
        if isinstance(answer, dict) and "status" in answer:  # Clarion's /ping, healthy or not
            check_api_version(self.url, answer)  # IncompatibleServer, or a warning for an old one
            self._version_checked = True

    def _send(
        self,
        method: str,
        path: str,
        *,
        replayable: bool,
        body: bytes | None,
        content_type: str | None,
        accept: str,
        query: Mapping[str, str] | None,
        timeout: float | None,
        answers: Collection[int],
        headers: Mapping[str, str] | None,
    ) -> Response:
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        # One request id for every try, so that the server's log ties the tries of one call together.
        headers = {
            "Accept": accept,
            "User-Agent": USER_AGENT,
            "X-Request-Id": uuid.uuid4().hex,
            **(headers or {}),
        }
        if content_type:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        seconds = self.timeout if timeout is None else timeout
        for retry in range(max(1, self.retry.attempts)):
            last = retry + 1 >= self.retry.attempts
            try:
                response = _exchange(request, seconds)
            except ConnectionFailed as failure:
                if isinstance(failure, TimedOut) or last or (failure.sent and not replayable):
                    raise
                self._sleep(self.retry.backoff_delay(retry))
                continue
            if response.status < 400 or response.status in answers:
                return response
            error = _error_of(response)
            delay = self._retry_delay(error, retry) if replayable or error.status == 429 else None
            if last or delay is None:
                raise error
            self._sleep(delay)
        raise AssertionError("unreachable: the last try returns or raises")

    def _retry_delay(self, error: APIError, retry: int) -> float | None:
        """Seconds before trying again after this error; None when it is not retried."""
        if error.status not in RETRIED_STATUSES or error.code in NOT_RETRIED_CODES:
            return None
        if error.retry_after is None:
            return self.retry.backoff_delay(retry)
        return error.retry_after if error.retry_after <= self.retry.max_retry_after else None


def _exchange(request: urllib.request.Request, timeout: float) -> Response:
    """One try: the answer, whatever its status; ConnectionFailed when none came."""
    where = f"{request.get_method()} {request.full_url}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Response(request.full_url, answer.status, answer.headers, answer.read())
    except urllib.error.HTTPError as error:  # an answer with an error status
        with error:
            try:
                body = error.read()
            except (OSError, http.client.HTTPException):
                body = b""
            return Response(request.full_url, error.code, error.headers, body)
    except urllib.error.URLError as error:
        # urllib raises URLError only while connecting and sending: the server holds no whole request.
        if isinstance(error.reason, TimeoutError):
            raise TimedOut(f"{where}: no connection within {timeout:g} s", sent=False) from None
        raise ConnectionFailed(f"{where}: {error.reason}", sent=False) from None
    except TimeoutError:
        raise TimedOut(f"{where}: no answer within {timeout:g} s", sent=True) from None
    except (OSError, http.client.HTTPException) as error:  # sent, then dropped, reset or cut short
        raise ConnectionFailed(f"{where}: no answer: {error!r}", sent=True) from None


def _error_of(response: Response) -> APIError:
    headers = response.headers
    reason = http.client.responses.get(response.status, "")
    return api_error(
        response.status,
        response.body,
        headers.get("X-Request-Id"),
        retry_after_seconds(headers.get("Retry-After")),
        reason,
    )


def new_idempotency_key() -> str:
    return uuid.uuid4().hex
