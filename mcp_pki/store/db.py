"""Opening the inventory: engine set-up, SQLite's write locking, schema migrations."""

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError

from mcp_pki.errors import InventoryError

if TYPE_CHECKING:  # the ORM is imported only by the commands that use it (see `tables`)
    from sqlalchemy.orm import Session

# The newest migration in `migrations/versions`. Checked against Alembic by a test, and
# compared here without importing Alembic, which would double the start-up time.
SCHEMA_REVISION = "0004"
_OUR_TABLES = {"authorities", "certificates", "audit_log"}
# Any fixed 64-bit number: the advisory lock that serialises writers on PostgreSQL.
_WRITE_LOCK_KEY = 0x6D63702D706B69  # "mcp-pki"
# Concurrent writers wait this long for each other before giving up.
BUSY_TIMEOUT_MS = 30_000


def open_inventory(url: str, *, create: bool = False) -> Engine:
    """An engine on a database that holds the current schema.

    A database that does not exist is created only when `create` is set (by ``init-ca``);
    an older schema is migrated; a database that is not ours is refused untouched.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise InventoryError(f"invalid database URL {redacted_url(url)!r}") from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database)
        if not path.exists() and not create:
            raise InventoryError(f"no inventory at {path}: run 'mcp-pki init-ca' first")
        if create:
            _create_private_file(path)
    try:
        engine = create_engine(parsed, json_deserializer=_load_json)
    except (NoSuchModuleError, ImportError) as exc:
        raise InventoryError(f"cannot use database {parsed.render_as_string()}: {exc}") from None
    if is_sqlite:
        _configure_sqlite(engine)
    try:
        _ensure_schema(engine, display=parsed.render_as_string(hide_password=True), create=create)
        if is_sqlite:
            _use_wal(engine)
    except BaseException as exc:
        engine.dispose()
        if isinstance(exc, OperationalError):
            raise InventoryError(f"cannot open the inventory: {_reason(exc)}") from None
        if isinstance(exc, DatabaseError):
            raise InventoryError(
                f"{parsed.render_as_string()} is not a usable mcp-pki inventory: {_reason(exc)}"
            ) from None
        raise
    return engine


def _load_json(text: str) -> Any:
    """JSON columns as SQLite hands them back: a row edited into invalid JSON is a corrupt
    inventory (one clear error), not a JSONDecodeError from deep inside a query."""
    try:
        return json.loads(text)
    except ValueError:
        raise InventoryError(
            "the inventory is corrupt: a row holds invalid JSON (edited by hand?); restore a backup"
        ) from None


def redacted_url(url: str) -> str:
    """A database URL fit for messages: the password, if any, replaced by ``***``. Works on
    URLs that SQLAlchemy cannot parse too, which are the ones that end up in errors."""
    return re.sub(r"(://[^/?#:@]*:)[^/?#]*@", r"\1***@", url)


def is_memory_database(url: str) -> bool:
    """An in-memory SQLite database: gone, with whatever it holds, when the process exits."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return False  # open_inventory says what is wrong with it
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or "mode=memory" in database or parsed.query.get("mode") == "memory"
    return parsed.get_backend_name() == "sqlite" and in_memory


def _create_private_file(path: Path) -> None:
    """The inventory holds the CA keys: its folder is created 0700 and the file 0600 before
    SQLite opens it (SQLite gives its -wal and -shm files the database file's mode)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InventoryError(f"cannot create the folder {path.parent}: {exc.strerror}") from None
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise InventoryError(f"cannot create the inventory at {path}: {exc.strerror}") from None


def _use_wal(engine: Engine) -> None:
    """WAL lets readers work while a writer commits. It is a property of the file, so it is
    set once the file is known to be ours: a database we refuse is left byte for byte."""
    connection = engine.raw_connection()  # outside any transaction, as SQLite requires
    try:
        connection.cursor().execute("PRAGMA journal_mode = WAL")
    finally:
        connection.close()


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the inventory's write lock from its start, committed when
    the block ends and rolled back when it raises.

    Writers must see each other's rows before they read (the next audit sequence, the next
    CRL number), so they are serialised: SQLite by BEGIN IMMEDIATE (see `_configure_sqlite`),
    PostgreSQL by a transaction-scoped advisory lock, released at commit or rollback.
    """
    with engine.execution_options(mcp_pki_write=True).begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_WRITE_LOCK_KEY})")
        yield connection


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: one consistent view of the inventory."""
    with engine.begin() as connection:
        yield connection


def write_session(engine: Engine) -> "Session":
    """An ORM session whose transaction holds the write lock from its start, as
    `write_transaction` does."""
    from sqlalchemy.orm import Session

    session = Session(engine.execution_options(mcp_pki_write=True), expire_on_commit=False)
    if engine.dialect.name == "postgresql":

        @event.listens_for(session, "after_begin")
        def _lock(_session: Session, _transaction: Any, connection: Any) -> None:
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_WRITE_LOCK_KEY})")

    return session


def read_session(engine: Engine) -> "Session":
    from sqlalchemy.orm import Session

    return Session(engine, expire_on_commit=False)


def connection_of(db: "Connection | Session") -> Connection:
    """The Core connection to run statements on, in the caller's transaction. A session is
    flushed first, so that the rows it holds are visible to those statements."""
    if isinstance(db, Connection):
        return db
    db.flush()
    return db.connection()


def _configure_sqlite(engine: Engine) -> None:
    """SQLAlchemy's documented recipe for SQLite transactions that wait instead of failing.

    pysqlite begins transactions lazily, at the first write: two processes that both read
    first then deadlock into an instant "database is locked". Disabling pysqlite's own
    BEGIN and emitting BEGIN IMMEDIATE ourselves takes the write lock up front, so a second
    writer waits (busy_timeout) for the first to commit.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            # FULL: a committed certificate survives a power cut, as the inventory promises.
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        write = connection.get_execution_options().get("mcp_pki_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _ensure_schema(engine: Engine, *, display: str, create: bool) -> None:
    with engine.connect() as connection:
        tables = set(_table_names(connection))
        revision = None
        if "alembic_version" in tables:
            revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if revision == SCHEMA_REVISION:
        return
    if tables and revision is None:
        raise InventoryError(f"{display} is not an mcp-pki inventory (it holds other tables)")
    if not tables and not create:
        # An empty file (truncated, or made by `touch`) or an empty PostgreSQL database: taking
        # it for a new inventory would publish empty CRLs and call an empty audit log intact.
        raise InventoryError(f"{display} holds no mcp-pki inventory (the database is empty): run 'mcp-pki init-ca' first")
    from mcp_pki.store.migrate import known_revisions, upgrade  # Alembic only when needed

    if revision is not None and not _OUR_TABLES <= tables:
        raise InventoryError(f"{display} is not an mcp-pki inventory (its tables are not ours)")
    if revision is not None and revision not in known_revisions():
        raise InventoryError(
            f"the inventory's schema ({revision}) is newer than this mcp-pki: upgrade mcp-pki"
        )
    upgrade(engine)


def _table_names(connection: Any) -> list[str]:
    if connection.dialect.name == "sqlite":
        rows = connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")
        return [row[0] for row in rows]
    from sqlalchemy import inspect

    return list(inspect(connection).get_table_names())


def _reason(exc: DatabaseError) -> str:
    return str(exc.orig) if exc.orig is not None else str(exc).splitlines()[0]
