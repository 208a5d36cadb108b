"""Safe extraction of model archives (`model.tar.gz`) and locating the model folder inside them."""

from __future__ import annotations

import posixpath
import tarfile
from pathlib import Path

from shared.errors import ModelLoadError, UnsafeArchive


def _check_member(member: tarfile.TarInfo) -> None:
    """Refuse anything that could write outside the target or create special files."""
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"model archive refused: absolute path {name!r}")
    if ".." in Path(name).parts or ".." in name.split("\\"):
        raise UnsafeArchive(f"model archive refused: path escapes the archive {name!r}")
    if member.isdev() or member.isfifo():
        raise UnsafeArchive(f"model archive refused: device or pipe {name!r}")
    if member.issym() or member.islnk():
        target = member.linkname
        if member.issym():
            target = posixpath.join(posixpath.dirname(name), target)
        normalized = posixpath.normpath(target)
        if target.startswith("/") or normalized == ".." or normalized.startswith("../"):
            raise UnsafeArchive(f"model archive refused: link {name!r} points outside ({member.linkname!r})")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"model archive refused: unsupported entry type {name!r}")


def extract_archive(archive: Path, destination: Path) -> None:
    """Extract `archive` into `destination`, refusing unsafe members before anything is written."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            # The "data" filter is a second line of defence (and drops permissions bits we never want).
            tar.extractall(destination, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise UnsafeArchive(f"model archive refused: {exc}") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ModelLoadError(f"model archive {archive.name} could not be read: {exc}") from None


def find_model_root(directory: Path) -> Path:
    """The folder holding config.json: the archive root, or its single top-level folder."""
    if (directory / "config.json").is_file():
        return directory
    children = [p for p in directory.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir() and (children[0] / "config.json").is_file():
        return children[0]
    raise ModelLoadError("model archive holds no config.json at its root or inside a single top-level folder")
