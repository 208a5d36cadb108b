"""Objects in S3 (or any S3-compatible store): an analysis's input, and the files it writes.

boto3 honours AWS_ENDPOINT_URL, AWS_REGION and the usual credential variables itself, as it does
for models loaded from S3 (shared/runtime/source.py).
"""

from __future__ import annotations

import re
from typing import Any

from shared.errors import InvalidRequest, PayloadTooLarge, StorageUnavailable

# What S3 says when the object or bucket is the caller's mistake (a 400), not the store's failure.
_CALLERS_MISTAKES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound", "InvalidBucketName"}


# S3's rules for a bucket name (3-63 lower-case letters, digits, dots and hyphens) and a key (at most
# 1,024 bytes of UTF-8): a location outside them is the caller's mistake, told before any call.
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
MAX_KEY_BYTES = 1024


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` as (bucket, key); anything else is a 400."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidRequest(f"{uri!r}: an S3 location is s3://bucket/key")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not BUCKET_NAME.fullmatch(bucket) or not key:
        raise InvalidRequest(f"{uri!r}: an S3 location is s3://bucket/key, with a valid bucket name")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest(f"{uri!r}: the key is not valid Unicode") from None
    if size > MAX_KEY_BYTES:
        raise InvalidRequest(f"{uri!r}: a key is at most {MAX_KEY_BYTES} bytes")
    return bucket, key


def _client() -> Any:
    import boto3

    return boto3.client("s3")


def _failure(uri: str, exc: Exception) -> Exception:
    from botocore.exceptions import ClientError, ParamValidationError

    if isinstance(exc, ParamValidationError):
        return InvalidRequest(f"{uri}: {str(exc).splitlines()[-1]}")

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _CALLERS_MISTAKES:
            return InvalidRequest(f"{uri}: no such object or bucket")
        return StorageUnavailable(f"{uri}: S3 refused: {code or exc}")
    return StorageUnavailable(f"{uri}: S3 is unavailable: {exc}")


def read_object(uri: str, max_bytes: int) -> bytes:
    """The object's bytes; larger than `max_bytes` is a 413 (checked before it is downloaded)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_uri(uri)
    try:
        client = _client()
        size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        if size > max_bytes:
            raise PayloadTooLarge(f"{uri}: {size} bytes, over the limit of {max_bytes} (ANALYSIS_MAX_BYTES)")
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (BotoCoreError, ClientError) as exc:
        raise _failure(uri, exc) from None


def write_objects(prefix_uri: str, files: dict[str, bytes], content_types: dict[str, str]) -> None:
    """Each file under the prefix (`s3://bucket/prefix/` + name)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_uri(prefix_uri.rstrip("/") + "/x")
    prefix = prefix[:-1]
    try:
        client = _client()
        for name, data in files.items():
            client.put_object(Bucket=bucket, Key=prefix + name, Body=data, ContentType=content_types[name])
    except (BotoCoreError, ClientError) as exc:
        raise _failure(prefix_uri, exc) from None
