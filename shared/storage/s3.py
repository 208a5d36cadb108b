"""Objects in S3 (or any S3-compatible store): an analysis's input, and the files it writes, only
inside S3_ALLOWED_PREFIXES.

boto3 honours AWS_ENDPOINT_URL, AWS_REGION and the usual credential variables itself, as it does
for models loaded from S3 (shared/runtime/source.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from shared.errors import (
    Forbidden,
    InvalidRequest,
    NoStorageAccess,
    NotFound,
    PayloadTooLarge,
    StorageUnavailable,
)

log = logging.getLogger(__name__)

# S3's rules for a bucket name (3-63 lower-case letters, digits, dots and hyphens) and a key (at most
# 1,024 bytes of UTF-8): a location outside them is the caller's mistake, told before any call.
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
MAX_KEY_BYTES = 1024

# A key that some layer between Clarion and the objects could read as another key: `%2e%2e` or `%2f`
# decoded by a proxy, a backslash taken for a separator, a control character cutting a log line.
_AMBIGUOUS = re.compile(r"[%\\\x00-\x1f\x7f-\x9f]")

# S3's answers that mean "you cannot have this object": missing and forbidden get the same reply, so
# that a caller cannot learn which objects exist where the service may not read.
_NOT_READABLE = {
    "NoSuchKey",
    "NoSuchBucket",
    "404",
    "NotFound",
    "AccessDenied",
    "403",
    "Forbidden",
    "AllAccessDisabled",
}
# S3's answers about the service's own credentials, clock or region: the deployment's fault, the same
# for every object (so they tell nothing of what exists), and a 503 that says so.
_DEPLOYMENT_FAULTS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "RequestTimeTooSkewed",
}
_NOT_READABLE_MESSAGE = {
    "read": "no such object, or the service may not read it",
    "write": "no such bucket, or the service may not write there",
}
# 4xx codes that pass by themselves: S3 is busy, not the request wrong.
_TRANSIENT = {"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException"}


def split_uri(uri: str, folder: bool = False) -> tuple[str, str]:
    """`s3://bucket/key` as (bucket, key), checked before any S3 call; anything else is a 400.

    `folder`: the location is a prefix (`s3://bucket`, `s3://bucket/out` or `s3://bucket/out/`), and its
    key comes back empty or ending in `/`, so `out` never matches `outer/`.
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidRequest(f"{uri!r}: an S3 location is s3://bucket/key")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if folder and key and not key.endswith("/"):
        key += "/"
    if not BUCKET_NAME.fullmatch(bucket) or not (key or folder):
        raise InvalidRequest(f"{uri!r}: an S3 location is s3://bucket/key, with a valid bucket name")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest(f"{uri!r}: the key is not valid Unicode") from None
    if size > MAX_KEY_BYTES - (len("records.jsonl") if folder else 0):
        raise InvalidRequest(f"{uri!r}: a key is at most {MAX_KEY_BYTES} bytes")
    if _AMBIGUOUS.search(key):
        raise InvalidRequest(f"{uri!r}: a key may not hold '%', '\\' or control characters")
    segments = key.split("/")[:-1] if folder else key.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise InvalidRequest(f"{uri!r}: a key may not hold '.' or '..' segments, or '//'")
    return bucket, key


def check_allowed(uri: str, allowed: Sequence[str], folder: bool = False) -> tuple[str, str]:
    """`uri` as (bucket, key) when it lies inside one of the `allowed` prefixes (S3_ALLOWED_PREFIXES);
    outside, or with none allowed, a 403 before any S3 call."""
    bucket, key = split_uri(uri, folder)
    for prefix in allowed:
        allowed_bucket, allowed_key = split_uri(prefix, folder=True)
        if bucket == allowed_bucket and key.startswith(allowed_key):
            return bucket, key
    where = "none are set" if not allowed else "set by the operator"
    raise Forbidden(f"{uri}: outside the locations this service may use (S3_ALLOWED_PREFIXES, {where})")


def _client() -> Any:
    import boto3

    return boto3.client("s3")


def _failure(uri: str, exc: Exception, verb: str = "read") -> Exception:
    """What an S3 error means to the caller: only S3 being away or failing is a 503 (retryable). A
    deployment without S3 credentials has no S3 access: a 403 that says so, since no retry helps."""
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        ParamValidationError,
        PartialCredentialsError,
    )

    if isinstance(exc, ParamValidationError):
        return InvalidRequest(f"{uri}: {str(exc).splitlines()[-1]}")
    not_readable = NotFound(f"{uri}: {_NOT_READABLE_MESSAGE[verb]}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return NoStorageAccess(
            f"{uri}: this deployment has no S3 access (no S3 credentials: AWS_* settings or a role); "
            "send the texts in the request body"
        )
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _DEPLOYMENT_FAULTS:
            return StorageUnavailable(f"{uri}: S3 refused the service's credentials, clock or region: {code}")
        if code in _NOT_READABLE or status in (403, 404):
            log.info("%s: S3 answered %s", uri, code or status)  # for the operator, not the caller
            return not_readable
        if code == "InvalidBucketName":
            return InvalidRequest(f"{uri}: not a valid bucket name")
        if 400 <= status < 500 and code not in _TRANSIENT:
            return InvalidRequest(f"{uri}: S3 refused the request: {code or status}")
        return StorageUnavailable(f"{uri}: S3 failed: {code or exc}")
    return StorageUnavailable(f"{uri}: S3 is unavailable: {exc}")


def read_object(uri: str, max_bytes: int, allowed: Sequence[str]) -> bytes:
    """The object's bytes; larger than `max_bytes` is a 413. At most `max_bytes + 1` bytes are ever
    read, so an object that grew after its HEAD (or a store that misreports sizes) is still caught."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = check_allowed(uri, allowed)
    too_large = f"over the limit of {max_bytes} bytes (ANALYSIS_MAX_BYTES)"
    try:
        client = _client()
        size = int(_head(client, bucket, key)["ContentLength"])
        if size > max_bytes:
            raise PayloadTooLarge(f"{uri}: {size} bytes, {too_large}")
        if size == 0:
            return b""  # a Range on an empty object is a 416
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes}")["Body"]
        try:
            data = body.read(max_bytes + 1)  # a store that ignores Range still sends no more
            if len(data) <= max_bytes:
                # At the end of the stream botocore checks the length it was promised: a download
                # cut short raises (a 503) instead of being analyzed as the whole input.
                body.read(1)
        finally:
            body.close()
    except (BotoCoreError, ClientError) as exc:
        raise _failure(uri, exc) from None
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{uri}: {too_large}")
    return data


def _head(client: Any, bucket: str, key: str) -> dict[str, Any]:
    """HEAD the object. An error answer to a HEAD has no body, so S3's reason is lost: a 403 is asked
    again as a one-byte GET, whose answer names it (the service's own credentials, or a refusal)."""
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) != 403:
            raise
    client.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].close()
    return client.head_object(Bucket=bucket, Key=key)  # readable after all: HEAD again


def write_objects(
    prefix_uri: str, files: dict[str, bytes], content_types: dict[str, str], allowed: Sequence[str]
) -> None:
    """Each file under the prefix (`s3://bucket/prefix/` + name), inside `allowed` only."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = check_allowed(prefix_uri, allowed, folder=True)
    try:
        client = _client()
        for name, data in files.items():
            client.put_object(Bucket=bucket, Key=prefix + name, Body=data, ContentType=content_types[name])
    except (BotoCoreError, ClientError) as exc:
        raise _failure(prefix_uri, exc, verb="write") from None
