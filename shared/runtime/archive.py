"""Safe extraction of model archives (`model.tar.gz`) and locating the model folder inside them."""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path

from shared.errors import ModelLoadError, UnsafeArchive

# Extraction filters (PEP 706) arrived in Python 3.11.4; Debian bookworm's Python, the base of the
# images built here, is 3.11.2. Without them, _check_member is the defence and _data_member does what
# the "data" filter would do to what it lets through.
HAS_FILTERS = hasattr(tarfile, "data_filter")


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


def _data_member(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """The "data" filter's changes to a member already checked: no set-id, sticky or group/other write
    bits, owner may read and write, and no owner from the archive (never chown to its ids)."""
    member = member.replace(deep=False) if hasattr(member, "replace") else member
    if member.isfile() or member.isdir():
        owner = 0o700 if member.isdir() else 0o600
        member.mode = (member.mode & 0o755) | owner
    member.uid, member.gid = os.getuid(), os.getgid()
    member.uname = member.gname = ""
    return member


def extract_archive(archive: Path, destination: Path) -> None:
    """Extract `archive` into `destination`, refusing unsafe members before anything is written."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            if HAS_FILTERS:
                # The "data" filter is a second line of defence (and drops mode bits we never want).
                tar.extractall(destination, members=members, filter="data")
            else:
                tar.extractall(destination, members=[_data_member(m) for m in members])
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
