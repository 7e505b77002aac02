"""Atomic, private file output.

Files are staged as hidden temporary files in their destination folder (created 0600 when
they hold a key, never chmod-ed afterwards), fsync-ed, and only renamed into place after the
inventory has committed the certificate they contain. A crash therefore leaves either no
file or a complete one, and never a certificate on disk that the inventory lacks.
"""

import os
import secrets
from pathlib import Path

from mcp_pki.errors import Conflict, InvalidInput

PRIVATE = 0o600
PUBLIC = 0o644


class StagedFiles:
    """A set of files written together: `stage` each, then `commit` or `discard`."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._created_dirs: list[Path] = []

    def ensure_folder(self, folder: Path) -> None:
        """Create `folder` (0700: it may hold keys); removed again by `discard`."""
        missing = []
        current = folder.absolute()
        while not current.exists():
            missing.append(current)
            current = current.parent
        if not current.is_dir():
            raise InvalidInput(f"{current} is not a folder")
        for path in reversed(missing):
            try:
                path.mkdir(mode=0o700)
            except OSError as exc:
                raise InvalidInput(f"cannot create {path}: {exc.strerror}") from None
            self._created_dirs.append(path)

    def stage(self, destination: Path, data: bytes, *, mode: int = PUBLIC) -> None:
        temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(6)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            descriptor = os.open(temporary, flags, mode)
        except OSError as exc:
            raise InvalidInput(f"cannot write {destination}: {exc.strerror}") from None
        self._staged.append((temporary, destination))
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def commit(self) -> list[Path]:
        folders = set()
        for temporary, destination in self._staged:
            os.replace(temporary, destination)
            folders.add(destination.parent)
        for folder in folders:
            _fsync_folder(folder)
        written = [destination for _, destination in self._staged]
        self._staged.clear()
        self._created_dirs.clear()
        return written

    def discard(self) -> None:
        for temporary, _ in self._staged:
            temporary.unlink(missing_ok=True)
        self._staged.clear()
        for folder in reversed(self._created_dirs):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._created_dirs.clear()


def refuse_existing(paths: list[Path], *, force: bool) -> None:
    """Existing outputs (symlinks included) are only replaced with ``--force``."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            raise Conflict(f"{path} is a folder")
        if not force and (path.exists() or path.is_symlink()):
            raise Conflict(f"{path} already exists: use --force to replace it")


def write_atomically(destination: Path, data: bytes, *, mode: int = PUBLIC, force: bool = False) -> None:
    """One file, atomically, refusing to replace an existing one without `force`."""
    refuse_existing([destination], force=force)
    staged = StagedFiles()
    try:
        staged.ensure_folder(destination.parent)
        staged.stage(destination, data, mode=mode)
        staged.commit()
    except BaseException:
        staged.discard()
        raise


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
