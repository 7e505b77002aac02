"""Atomic, private file output, written only after the inventory has committed.

A command collects the files it will write while its transaction runs, and writes them
once the transaction has committed: a certificate is always in the inventory before any
file holds it, and a crash leaves at most a recorded certificate without its files, never
the reverse. Each file is written as a hidden temporary file in its destination folder
(created 0600 when it holds a key, never chmod-ed afterwards), fsync-ed, then renamed.

Input files the user names are read through `read_input`, which bounds their size: a
roster or a CSR that is really /dev/zero is refused rather than read into memory.
"""

import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from mcp_pki.errors import Conflict, InvalidInput, PkiError

PRIVATE = 0o600
PUBLIC = 0o644
# Far above any real certificate, key, CSR or bundle; a roster of 100,000 people is ~10 MB.
MAX_INPUT = 16 * 1024 * 1024
MAX_ROSTER = 64 * 1024 * 1024


def read_input(path: Path, what: str, *, limit: int = MAX_INPUT) -> bytes:
    """An input file the user named, or one clean error saying why it cannot be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise InvalidInput(f"{what} {path} is larger than {limit // (1024 * 1024)} MiB: refused")
    return data


class FilesNotWritten(PkiError):
    """Writing failed after the inventory committed (disk full, permissions)."""


@dataclass
class OutputFiles:
    """The files one command writes: `prepare` folders first, `add` files, then `write`."""

    _files: list[tuple[Path, bytes, int]] = field(default_factory=list)
    _created_dirs: list[Path] = field(default_factory=list)

    def prepare(self, folder: Path) -> None:
        """Create `folder` (0700: it may hold keys) before anything is recorded, so that a
        folder we cannot create fails the command while it can still change nothing."""
        target = folder.absolute()
        existing = nearest_existing(target)
        if not existing.is_dir():
            raise InvalidInput(f"{existing} is not a folder")
        missing = []
        while target != existing:
            missing.append(target)
            target = target.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=0o700)
            except OSError as exc:
                self.abandon()
                raise InvalidInput(f"cannot create {path}: {exc.strerror}") from None
            self._created_dirs.append(path)
        if not os.access(folder, os.W_OK | os.X_OK):
            self.abandon()
            raise InvalidInput(f"cannot write into {folder}: permission denied")

    def add(self, path: Path, data: bytes, *, mode: int = PUBLIC) -> None:
        self._files.append((path, data, mode))

    def abandon(self) -> None:
        """The command failed before committing: remove the folders `prepare` created."""
        for folder in reversed(self._created_dirs):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._created_dirs.clear()
        self._files.clear()

    def write(self, *, replace: bool = True) -> list[Path]:
        """Write every file: all temporaries first, then put them in place, then fsync the
        folders. Without `replace`, a file that appeared meanwhile (another run writing to
        the same folder) is never overwritten: hard links fail where renames would not."""
        staged: list[tuple[Path, Path]] = []
        placed: list[Path] = []
        try:
            for path, data, mode in self._files:
                staged.append((_write_temporary(path, data, mode), path))
            for temporary, path in staged:
                if replace:
                    os.replace(temporary, path)
                else:
                    os.link(temporary, path)
                    temporary.unlink()
                placed.append(path)
        except OSError as exc:
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)
            if not replace:
                for path in placed:  # ours alone: created by the links above
                    path.unlink(missing_ok=True)
            reason = "it already exists" if isinstance(exc, FileExistsError) else exc.strerror
            raise FilesNotWritten(f"cannot write {exc.filename2 or exc.filename or 'output'}: {reason}") from None
        for folder in {path.parent for _, path in staged}:
            _fsync_folder(folder)
            _remove_leftovers(folder)
        return [path for _, path in staged]


_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")
# A temporary this old was left by a run that was killed: ours live for milliseconds.
_LEFTOVER_AGE = 15 * 60


def _remove_leftovers(folder: Path) -> None:
    """Our temporaries that a killed run left in a folder we write to; one may hold a
    private key (perhaps of a file this folder no longer gets), which nothing else would
    ever remove."""
    cutoff = time.time() - _LEFTOVER_AGE
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not _TEMPORARY.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
        except OSError:
            continue


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists; a dangling symlink exists as a name and
    stops the walk (nothing can be created through it)."""
    while not (path.exists() or path.is_symlink()) and path != path.parent:
        path = path.parent
    return path


def folder_problem(folder: Path) -> str | None:
    """Why `OutputFiles.prepare` would refuse `folder`, found without creating anything:
    for a command that checks every output folder before it records anything."""
    existing = nearest_existing(folder.absolute())
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def _write_temporary(destination: Path, data: bytes, mode: int) -> Path:
    temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(temporary, flags, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        if exc.filename is None:  # a full disk names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(destination)) from None
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def refuse_existing(paths: list[Path], *, force: bool, hint: str = "use --force to replace it") -> None:
    """Existing outputs (symlinks included) are only replaced with ``--force``."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            raise Conflict(f"{path} is a folder")
        if not force and (path.exists() or path.is_symlink()):
            raise Conflict(f"{path} already exists: {hint}")


def write_atomically(destination: Path, data: bytes, *, mode: int = PUBLIC, force: bool = False) -> None:
    """One file, atomically, refusing to replace an existing one without `force`."""
    refuse_existing([destination], force=force)
    output = OutputFiles()
    output.prepare(destination.parent)
    output.add(destination, data, mode=mode)
    try:
        output.write()
    except BaseException:
        output.abandon()
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
