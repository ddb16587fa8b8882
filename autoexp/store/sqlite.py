"""``sqlite:///path``: the embedded default. One file, WAL mode, nothing to install.

Several processes on one machine may share the file: every write is one ``BEGIN
IMMEDIATE`` transaction (SQLite serialises writers; readers never block), so increments
add up exactly and an ``add`` with ``once`` is applied at most once. A committed write
survives the process being killed (WAL with ``synchronous=NORMAL``); add
``?synchronous=full`` to the URL to survive a power loss too, at the cost of an fsync
per commit. ``sqlite:///x.db`` is relative to the working directory, ``sqlite:////abs/x.db``
absolute.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, StoreError
from .base import (
    FloatArray,
    Item,
    Record,
    UnitsInBatches,
    check_amounts,
    check_declared,
    check_hold,
    check_lease,
    check_name,
    check_shapes,
    check_units,
    dumps,
    summed,
    tally,
)

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shapes (exp TEXT, field TEXT, shape TEXT, PRIMARY KEY (exp, field))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (exp TEXT, field TEXT, idx INTEGER, value REAL,
    PRIMARY KEY (exp, field, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS once (exp TEXT, id TEXT, PRIMARY KEY (exp, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS assign (exp TEXT, unit TEXT, value TEXT, PRIMARY KEY (exp, unit))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY AUTOINCREMENT, exp TEXT, record TEXT);
CREATE INDEX IF NOT EXISTS log_exp ON log (exp, seq);
CREATE TABLE IF NOT EXISTS meta (exp TEXT, name TEXT, value TEXT, PRIMARY KEY (exp, name))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (exp TEXT, name TEXT, holder TEXT, until REAL,
    PRIMARY KEY (exp, name)) WITHOUT ROWID;
"""
_SYNC = {"normal": "NORMAL", "full": "FULL", "off": "OFF"}


def _write_ahead(db: sqlite3.Connection, timeout_s: float) -> None:
    """Put ``db``'s file in WAL mode. On a new file, processes switching it at the same
    instant (the workers of ``autoexp proxy --workers N`` on their first start) can each
    hold a shared lock and want the exclusive one; SQLite breaks that deadlock by telling
    one of them "database is locked" at once, without waiting its busy timeout (two
    processes opening a new store together: 113 of 400 opens refused so). The one
    refused tries again a few milliseconds later, until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.1)


def _why_not_opened(path: str | Path) -> str:
    """What about the file's folder keeps SQLite from opening it, if anything can be
    seen: it is missing, or this process may not write in it (the write-ahead log and
    its index are files beside the database: a read-only folder fails even an existing
    database). A container's volume owned by another user is the usual case."""
    if str(path) == ":memory:" or str(path).startswith("file:"):
        return ""
    folder = Path(path).parent
    who = f"uid {os.getuid()}" if hasattr(os, "getuid") else "this user"
    if not folder.is_dir():
        return f"; its folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"; its folder {folder} is not writable by this process ({who})"
    if Path(path).exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"; the file is not readable and writable by this process ({who})"
    return ""


class SQLiteStore(UnitsInBatches):
    """The :class:`~autoexp.store.base.Store` protocol on one SQLite file."""

    def __init__(self, url: str, *, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or not url.startswith("sqlite:///") or len(url) <= 10:
            raise ConfigError(f"store: {url!r} is not sqlite:///relative or sqlite:////absolute")
        path = Path(url[len("sqlite:///") :].split("?", 1)[0])
        sync = parse_qs(parts.query).get("synchronous", ["normal"])[-1].lower()
        if sync not in _SYNC:
            raise ConfigError(f"store: synchronous={sync!r} in {url!r}; accepted: normal, full")
        self.url = url
        self.path = path
        try:
            self._db = sqlite3.connect(
                path, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            _write_ahead(self._db, timeout_s)
            self._db.execute(f"PRAGMA synchronous={_SYNC[sync]}")
            self._db.executescript(_SCHEMA)
            self._json = _has_json(self._db)
        except sqlite3.Error as e:
            raise StoreError(f"store: cannot open {path} ({e}){_why_not_opened(path)}") from None
        self._lock = threading.Lock()
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        # per experiment: (the position after the last record read, that record's seq)
        self._read_at: dict[str, tuple[int, int]] = {}
        # The log's reads (expire's passes, exports: thousands of rows) on a connection
        # of their own, so they never hold up a write behind the lock above (a sticky
        # unit's first decision waits for its assign_many): the write-ahead log lets one
        # connection read while another writes. Opened at the first read; a database in
        # memory has one connection only.
        self._timeout_s = timeout_s
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._closed = False

    # --- state ---------------------------------------------------------------------------

    def _load_shapes(self, experiment: str) -> dict[str, tuple[int, ...]]:
        rows = self._db.execute("SELECT field, shape FROM shapes WHERE exp = ?", (experiment,))
        shapes = {f: tuple(json.loads(s)) for f, s in rows}
        self._shapes[experiment] = shapes
        return shapes

    def _known(self, experiment: str) -> dict[str, tuple[int, ...]]:
        """The experiment's fields as last read (read now if never)."""
        return self._shapes.get(experiment) or self._load_shapes(experiment)

    def declare(self, experiment: str, shapes: Mapping[str, tuple[int, ...]]) -> None:
        check_name("store.declare experiment", experiment)
        wanted = check_shapes("store.declare", shapes)
        with self._lock, self._write():
            have = self._load_shapes(experiment)
            check_declared(experiment, have, wanted)
            for name, shape in wanted.items():
                if name in have:
                    continue
                self._db.execute(
                    "INSERT INTO shapes VALUES (?, ?, ?)", (experiment, name, json.dumps(shape))
                )
                self._db.executemany(
                    "INSERT INTO state VALUES (?, ?, ?, 0.0)",
                    [(experiment, name, i) for i in range(math.prod(shape))],
                )
            self._load_shapes(experiment)

    def read(self, experiment: str) -> dict[str, FloatArray]:
        with self._lock:
            rows = self._db.execute(
                "SELECT field, idx, value FROM state WHERE exp = ?", (experiment,)
            ).fetchall()
            # the fields as last read, unless the rows show others (declared since by
            # another process: a field's zeros are written with its shape)
            shapes = self._shapes.get(experiment)
            if shapes is None or {r[0] for r in rows} != shapes.keys():
                shapes = self._load_shapes(experiment)
            out = {name: np.zeros(math.prod(shape)) for name, shape in shapes.items()}
            for field, idx, value in rows:
                out[field][idx] = value
            return {name: out[name].reshape(shape) for name, shape in shapes.items()}

    def read_meta(
        self, experiment: str, names: Sequence[str]
    ) -> tuple[dict[str, FloatArray], list[str | None]]:
        state = self.read(experiment)
        if not names:
            return state, []
        with self._lock:
            marks = ",".join("?" * len(names))
            found = dict(
                self._db.execute(
                    f"SELECT name, value FROM meta WHERE exp = ? AND name IN ({marks})",
                    (experiment, *names),
                ).fetchall()
            )
        return state, [None if n not in found else str(found[n]) for n in names]

    def add(
        self,
        experiment: str,
        amounts: Mapping[str, npt.ArrayLike],
        *,
        at: Mapping[str, npt.ArrayLike] | None = None,
        once: str | None = None,
        record: Record | None = None,
    ) -> bool:
        line = dumps(record) if record is not None else None
        with self._lock:
            shapes = self._shapes.get(experiment) or {}
            if not shapes or not set(amounts) <= set(shapes):  # declared elsewhere since
                shapes = self._load_shapes(experiment)
            checked = check_amounts(experiment, shapes, amounts, at)
            updates: list[tuple[float, str, str, int]] = []
            for name, (index, values) in checked.items():
                updates += [(v, experiment, name, i) for i, v in summed(index, values).items()]
            with self._write():
                if once is not None:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO once VALUES (?, ?)", (experiment, once)
                    )
                    if cur.rowcount == 0:
                        return False
                self._db.executemany(
                    "UPDATE state SET value = value + ? WHERE exp = ? AND field = ? AND idx = ?",
                    updates,
                )
                if line is not None:
                    self._db.execute(
                        "INSERT INTO log (exp, record) VALUES (?, ?)", (experiment, line)
                    )
            return True

    def add_many(self, experiment: str, items: Sequence[Item]) -> list[bool]:
        with self._lock:
            # One transaction, a few statements for the whole batch: the ids already
            # applied, then the new ids, their increments summed per cell (additive: the
            # same state as one by one) and their records, in order.
            with self._write():
                seen = self._applied(experiment, [once for once, _, _ in items])
                try:
                    lines, done, totals = tally(experiment, self._known(experiment), items, seen)
                except StoreError:  # a field declared since (by another process)?
                    lines, done, totals = tally(
                        experiment, self._load_shapes(experiment), items, seen
                    )
                new = [
                    (item[0], line) for item, line, d in zip(items, lines, done, strict=True) if d
                ]
                self._insert_once(experiment, [once for once, _ in new])
                self._db.executemany(
                    "UPDATE state SET value = value + ? WHERE exp = ? AND field = ? AND idx = ?",
                    [(v, experiment, name, index) for (name, index), v in totals.items()],
                )
                self._insert_log(experiment, [line for _, line in new])
            return done

    def _insert_once(self, experiment: str, ids: Sequence[str]) -> None:
        _insert_rows(self._db, "once (exp, id)", experiment, ids)

    def _applied(self, experiment: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` were applied before (inside the caller's transaction)."""
        out: set[str] = set()
        for start in range(0, len(ids), 500):  # under SQLite's limit on parameters
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT id FROM once WHERE exp = ? AND id IN ({marks})", (experiment, *chunk)
            )
            out.update(str(r[0]) for r in rows)
        return out

    # --- assignments, log, meta ----------------------------------------------------------

    def assign_many(
        self, experiment: str, items: Sequence[tuple[str, str, str | None]]
    ) -> list[str]:
        check_units(items)
        if self._json and len(items) > 1 and all(w is None for _, _, w in items):
            # new units (the common batch): two statements for all of them, the first
            # value of a unit repeated in the batch inserted, as one by one would
            pairs = json.dumps([[u, v] for u, v, _ in items])
            units = json.dumps([u for u, _, _ in items])
            with self._lock, self._write():
                self._db.execute(
                    "INSERT OR IGNORE INTO assign SELECT ?, json_extract(value, '$[0]'), "
                    "json_extract(value, '$[1]') FROM json_each(?) ORDER BY key",
                    (experiment, pairs),
                )
                stored = dict(
                    self._db.execute(
                        "SELECT unit, value FROM assign WHERE exp = ? AND unit IN "
                        "(SELECT value FROM json_each(?))",
                        (experiment, units),
                    ).fetchall()
                )
            return [str(stored[u]) for u, _, _ in items]
        out = []
        # one transaction for the batch: its BEGIN and COMMIT cost more than a unit's
        # two statements
        with self._lock, self._write():
            for unit, value, unless in items:
                self._db.execute(
                    "INSERT INTO assign VALUES (?, ?, ?) ON CONFLICT (exp, unit) DO UPDATE "
                    "SET value = excluded.value WHERE assign.value = ?",
                    (experiment, unit, value, unless),
                )
                row = self._db.execute(
                    "SELECT value FROM assign WHERE exp = ? AND unit = ?", (experiment, unit)
                ).fetchone()
                out.append(str(row[0]))
        return out

    def append(self, experiment: str, records: Sequence[Record]) -> None:
        check_name("store.append experiment", experiment)
        lines = [dumps(r) for r in records]
        with self._lock, self._write():
            self._insert_log(experiment, lines)

    def _insert_log(self, experiment: str, lines: Sequence[str]) -> None:
        _insert_rows(self._db, "log (exp, record)", experiment, lines)

    def records(
        self, experiment: str, *, start: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines(experiment, start=start, limit=limit)]

    def lines(self, experiment: str, *, start: int = 0, limit: int | None = None) -> list[str]:
        # Reading on from where the last read ended (expire's passes, paged exports) goes
        # by seq, not OFFSET, which would walk every earlier row: the log only grows and
        # its seqs are committed in order, so a position keeps its seq.
        db, lock = self._log_reader()
        with lock:
            pos, after = self._read_at.get(experiment, (-1, 0))
            if pos == start:
                rows = db.execute(
                    "SELECT seq, record FROM log WHERE exp = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (experiment, after, -1 if limit is None else limit),
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT seq, record FROM log WHERE exp = ? ORDER BY seq LIMIT ? OFFSET ?",
                    (experiment, -1 if limit is None else limit, start),
                ).fetchall()
            if rows:
                self._read_at[experiment] = (start + len(rows), int(rows[-1][0]))
        return [str(r[1]) for r in rows]

    def get(self, experiment: str, name: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM meta WHERE exp = ? AND name = ?", (experiment, name)
            ).fetchone()
        return None if row is None else str(row[0])

    def set(self, experiment: str, name: str, value: str) -> None:
        check_name("store.set experiment", experiment)
        with self._lock, self._write():
            self._db.execute(
                "INSERT INTO meta VALUES (?, ?, ?) ON CONFLICT (exp, name) DO UPDATE "
                "SET value = excluded.value",
                (experiment, name, value),
            )

    def hold(self, experiment: str, name: str, holder: str, ttl_s: float) -> bool:
        """(On the wall clock: the processes sharing the file share the machine's.)"""
        ttl_s = check_hold(experiment, name, holder, ttl_s)
        with self._lock, self._write():
            now = time.time()
            taken = self._db.execute(
                "INSERT INTO holds VALUES (?, ?, ?, ?) ON CONFLICT (exp, name) DO UPDATE "
                "SET holder = excluded.holder, until = excluded.until "
                "WHERE holds.holder = excluded.holder OR holds.until <= ?",
                (experiment, name, holder, now + ttl_s, now),
            )
            return taken.rowcount == 1

    def release(self, experiment: str, name: str, holder: str) -> bool:
        check_lease("store.release", experiment, name, holder)
        with self._lock, self._write():
            key = (experiment, name, holder)
            held = self._db.execute(
                "SELECT until FROM holds WHERE exp = ? AND name = ? AND holder = ?", key
            ).fetchone()
            self._db.execute("DELETE FROM holds WHERE exp = ? AND name = ? AND holder = ?", key)
            return held is not None and held[0] > time.time()

    def experiments(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT exp FROM shapes UNION SELECT exp FROM log UNION SELECT exp FROM meta "
                "UNION SELECT exp FROM assign ORDER BY 1"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def _log_reader(self) -> tuple[sqlite3.Connection, threading.Lock]:
        """The connection the log is read on, and its lock."""
        where = str(self.path)
        if where == ":memory:" or where.startswith("file:") or self._closed:
            return self._db, self._lock  # closed: fails as every other call then does
        with self._read_lock:
            if self._reader is None:
                try:
                    self._reader = sqlite3.connect(
                        self.path,
                        timeout=self._timeout_s,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                except sqlite3.Error as e:
                    raise StoreError(f"store: cannot read {self.path} ({e})") from None
        return self._reader, self._read_lock

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()

    def _write(self) -> _Transaction:
        return _Transaction(self._db)


ROWS_MAX = 256  # rows of one INSERT statement, at most


def _insert_rows(db: sqlite3.Connection, into: str, experiment: str, texts: Sequence[str]) -> None:
    """``INSERT INTO {into} VALUES (experiment, text), ...``, the rows in order, a few
    statements for many rows: each of 2**k rows (at most :data:`ROWS_MAX`), so that few
    distinct statements are prepared and the sqlite3 module keeps them.

    One statement of many rows, rather than ``executemany`` (which takes the GIL back for
    every row: it stalls the event loop of a sidecar writing in a background thread) or
    one row per element of a JSON array (``json_each``, as before: SQLite parsed each
    record and wrote it out again). Measured with callgrind, 64 decision records (300
    bytes each) per transaction: 7,100 instructions per record, against 19,900 through
    ``json_each`` and 20,000 through ``executemany``."""
    start, left = 0, len(texts)
    while left:
        n = min(ROWS_MAX, 1 << (left.bit_length() - 1))
        db.execute(_values(into, n), (experiment, *texts[start : start + n]))
        start, left = start + n, left - n


@functools.lru_cache(maxsize=64)
def _values(into: str, rows: int) -> str:
    # ?1 is the experiment; each bare ? takes the next number: ?2, ?3, ... in row order
    return f"INSERT INTO {into} VALUES {','.join(['(?1, ?)'] * rows)}"


def _has_json(db: sqlite3.Connection) -> bool:
    """Whether this SQLite has the JSON functions (built in since 3.38; json1 before)."""
    try:
        db.execute("SELECT value FROM json_each('[1]')").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error (nothing half-written)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(f"store: cannot start a write ({e})") from None

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as e:
                self.db.execute("ROLLBACK")
                raise StoreError(f"store: write failed ({e})") from None
        self.db.execute("ROLLBACK")
        if isinstance(error, sqlite3.Error):
            raise StoreError(f"store: write failed ({error})") from error
