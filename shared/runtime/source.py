"""Where the model comes from: a local folder, an S3 `model.tar.gz`, or the Hugging Face hub.

Precedence (first match wins):
1. `MODEL_DIR`, else `/opt/ml/model` when SageMaker extracted a model there (a `model.tar.gz` left
   in the folder is extracted safely first);
2. S3: `s3://BUCKET_NAME/MODEL_PATH` (a `model.tar.gz`, or a prefix holding one);
3. the hub: `HUB_MODEL_NAME`, else the default English sentiment model.
`LOCAL=true` allows only the first.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ModelLoadError
from shared.runtime.archive import extract_archive, find_model_root
from shared.settings import DEFAULT_HUB_MODEL, Settings

log = logging.getLogger(__name__)
_READY_MARKER = ".clarion-ready"


@dataclass(frozen=True)
class ModelLocation:
    """A model reference `from_pretrained` can load, plus what to call it in responses."""

    model_ref: str
    tokenizer_ref: str
    source: str  # "local", "s3" or "hub"
    model_id: str


def resolve_model(settings: Settings) -> ModelLocation:
    """Fetch the model if needed and say where it is. Safe to call from several processes at once."""
    local_dir = settings.local_model_dir
    if local_dir is not None:
        root = _local_model_root(local_dir, Path(settings.model_cache_dir))
        return _location(str(root), settings, "local", root.name)
    if settings.bucket_name and settings.model_path:
        root = _download_s3_model(settings)
        model_id = f"s3://{settings.bucket_name}/{settings.model_path}"
        return _location(str(root), settings, "s3", model_id)
    hub_name = settings.hub_model_name or DEFAULT_HUB_MODEL
    return _location(hub_name, settings, "hub", hub_name)


def _location(model_ref: str, settings: Settings, source: str, model_id: str) -> ModelLocation:
    return ModelLocation(
        model_ref=model_ref,
        tokenizer_ref=settings.tokenizer or model_ref,
        source=source,
        model_id=settings.model_name or model_id,
    )


def _local_model_root(directory: Path, cache_dir: Path) -> Path:
    if (directory / "config.json").is_file():
        return directory
    archives = sorted(directory.glob("*.tar.gz"))
    if archives:
        # /opt/ml/model may be read-only: extract into the cache, keyed by the archive's identity.
        stat = archives[0].stat()
        key = f"{archives[0].resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return _extract_once(archives[0], cache_dir / _digest(key))
    try:
        return find_model_root(directory)
    except ModelLoadError:
        raise ModelLoadError(
            f"model directory {directory} holds no config.json and no model.tar.gz"
        ) from None


def _s3_key(model_path: str) -> str:
    key = model_path.lstrip("/")
    return key if key.endswith((".tar.gz", ".tgz")) else f"{key.rstrip('/')}/model.tar.gz"


def _download_s3_model(settings: Settings) -> Path:
    import boto3  # only needed for S3 models
    from botocore.exceptions import BotoCoreError, ClientError

    assert settings.bucket_name is not None and settings.model_path is not None
    key = _s3_key(settings.model_path)
    target = Path(settings.model_cache_dir) / _digest(f"s3://{settings.bucket_name}/{key}")
    if (target / _READY_MARKER).is_file():
        return find_model_root(target / "model")
    target.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target):
        if not (target / _READY_MARKER).is_file():
            archive = target / "model.tar.gz"
            log.info("downloading s3://%s/%s", settings.bucket_name, key)
            try:
                # boto3 honours AWS_ENDPOINT_URL, AWS_REGION and the usual credential variables itself.
                boto3.client("s3").download_file(settings.bucket_name, key, str(archive))
            except (BotoCoreError, ClientError) as exc:
                raise ModelLoadError(f"could not download s3://{settings.bucket_name}/{key}: {exc}") from None
            try:
                _extract_into(archive, target)
            finally:
                archive.unlink(missing_ok=True)
    return find_model_root(target / "model")


def _extract_once(archive: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target):
        if not (target / _READY_MARKER).is_file():
            _extract_into(archive, target)
    return find_model_root(target / "model")


def _extract_into(archive: Path, target: Path) -> None:
    """Extract into a scratch folder, check it, then move it into place and mark it ready."""
    scratch = Path(tempfile.mkdtemp(dir=target, prefix=".extract-"))
    try:
        extract_archive(archive, scratch)
        find_model_root(scratch)
        final = target / "model"
        if final.exists():
            shutil.rmtree(final)
        scratch.rename(final)
        (target / _READY_MARKER).touch()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _exclusive_lock:
    """An flock on `<dir>/.lock` so that concurrent workers fetch a model once."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / ".lock"

    def __enter__(self) -> None:
        self._file = open(self._path, "w")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
