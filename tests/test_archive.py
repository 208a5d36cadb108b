"""Model archives: extracted safely; absolute paths, '..', outside links and devices are refused."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from shared.errors import ModelLoadError, UnsafeArchive
from shared.runtime.archive import extract_archive, find_model_root
from shared.runtime.source import resolve_model
from shared.settings import Settings


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str, data: bytes = b"{}") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


@pytest.mark.parametrize(
    "member",
    [
        _file("/etc/evil.json"),
        _file("../evil.json"),
        _file("model/../../evil.json"),
        _special("link", tarfile.SYMTYPE, "/etc/passwd"),
        _special("model/link", tarfile.SYMTYPE, "../../outside"),
        _special("hard", tarfile.LNKTYPE, "../outside"),
        _special("dev", tarfile.CHRTYPE),
        _special("blk", tarfile.BLKTYPE),
        _special("fifo", tarfile.FIFOTYPE),
    ],
    ids=[
        "absolute",
        "dotdot",
        "nested-dotdot",
        "symlink-abs",
        "symlink-out",
        "hardlink-out",
        "chardev",
        "blockdev",
        "fifo",
    ],
)
def test_malicious_archives_are_refused(tmp_path: Path, member) -> None:
    archive = _tar(tmp_path / "model.tar.gz", [_file("config.json"), member])
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(UnsafeArchive):
        extract_archive(archive, target)
    assert not (tmp_path / "evil.json").exists()
    assert list(target.iterdir()) == []  # refused before anything was written


def test_files_at_root_or_in_one_folder_both_work(tmp_path: Path) -> None:
    for layout, members in {
        "root": [_file("config.json"), _file("vocab.txt", b"x")],
        "folder": [_file("my-model/config.json"), _file("my-model/vocab.txt", b"x")],
    }.items():
        archive = _tar(tmp_path / f"{layout}.tar.gz", members)
        target = tmp_path / layout
        target.mkdir()
        extract_archive(archive, target)
        assert (find_model_root(target) / "vocab.txt").read_bytes() == b"x"


def test_archive_without_config_is_a_clear_error(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "model.tar.gz", [_file("a/x.txt"), _file("b/y.txt")])
    target = tmp_path / "out"
    target.mkdir()
    extract_archive(archive, target)
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        find_model_root(target)


def test_corrupt_archive_is_a_load_error(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"not a tarball")
    with pytest.raises(ModelLoadError, match="could not be read"):
        extract_archive(archive, tmp_path)


def test_model_dir_holding_a_tarball_is_extracted_into_the_cache(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    model_dir = tmp_path / "opt-ml-model"
    model_dir.mkdir()
    with tarfile.open(model_dir / "model.tar.gz", "w:gz") as tar:
        tar.add(tiny_model_dir, arcname=".")
    settings = Settings(model_dir=str(model_dir), model_cache_dir=str(tmp_path / "cache"))
    location = resolve_model(settings)
    assert location.source == "local"
    assert (Path(location.model_ref) / "config.json").is_file()
    assert resolve_model(settings).model_ref == location.model_ref  # extracted once, then reused


def test_precedence_local_then_s3_then_hub(tmp_path: Path, tiny_model_dir: Path) -> None:
    both = Settings(model_dir=str(tiny_model_dir), hub_model_name="org/other", tokenizer="org/tok")
    location = resolve_model(both)
    assert location.source == "local" and location.tokenizer_ref == "org/tok"
    hub = resolve_model(Settings(hub_model_name="org/model"))
    assert (hub.source, hub.model_ref) == ("hub", "org/model")
    default = resolve_model(Settings())
    assert default.model_ref == "distilbert/distilbert-base-uncased-finetuned-sst-2-english"


@pytest.fixture(params=["filters", "no filters"])
def filters(request, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both extraction paths: Python's "data" filter, and the checks alone (Python < 3.11.4)."""
    import shared.runtime.archive

    available = shared.runtime.archive.HAS_FILTERS
    monkeypatch.setattr(shared.runtime.archive, "HAS_FILTERS", request.param == "filters" and available)
    return shared.runtime.archive.HAS_FILTERS


def test_both_paths_refuse_what_is_unsafe_and_drop_unwanted_mode_bits(tmp_path: Path, filters: bool) -> None:
    for i, member in enumerate([_file("../evil.json"), _special("link", tarfile.SYMTYPE, "/etc/passwd")]):
        target = tmp_path / f"refused-{i}"
        target.mkdir()
        with pytest.raises(UnsafeArchive):
            extract_archive(_tar(tmp_path / f"bad-{i}.tar.gz", [_file("config.json"), member]), target)
        assert list(target.iterdir()) == []
    setuid, _ = _file("model/weights.bin", b"w")
    setuid.mode, setuid.uid, setuid.gid = 0o6777, 4242, 4242
    readonly, _ = _file("model/config.json")
    readonly.mode = 0o000
    archive = _tar(tmp_path / "model.tar.gz", [(setuid, b"w"), (readonly, b"{}")])
    target = tmp_path / "out"
    target.mkdir()
    extract_archive(archive, target)
    weights, config = target / "model" / "weights.bin", target / "model" / "config.json"
    assert weights.stat().st_mode & 0o7777 == 0o755  # no set-id, sticky, group/other write bits
    assert config.stat().st_mode & 0o600 == 0o600  # the owner can read and write
    assert weights.stat().st_uid == os.getuid()  # never the archive's owner
    assert find_model_root(target) == target / "model"


def test_the_python_requirement_includes_debians() -> None:
    """Debian bookworm's Python 3.11.2 (the images' base) must install the package."""
    import tomllib

    from packaging.specifiers import SpecifierSet

    from tests.support import REPO

    spec = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    assert "3.11.2" in spec and "3.13.0" in spec and "3.10.12" not in spec
