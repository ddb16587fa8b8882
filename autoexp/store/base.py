"""The ``Store`` protocol: where experiments keep what replicas share.

Everything autoexp keeps about an experiment, by its name:

* **state**: named float arrays (a policy's or a test's :meth:`~policies.base.Stats.to_dict`),
  changed only by :meth:`Store.add`, which sums increments atomically (policy states are
  additive, so replicas never lock and never lose an update). ``once`` makes an add
  idempotent: a reward sent twice, or retried after a timeout, counts once.
* **assignments**: a unit's alternative, set at first exposure (:meth:`Store.assign`).
* **the log**: append-only records (decisions, rewards, lifecycle changes), in order.
* **meta**: small named strings (the experiment's status, its config digest).

Backends: ``memory://`` (tests, one process), ``sqlite:///path`` (the embedded default:
durable, many processes on one machine), ``redis://host:port/db`` (many replicas).
:func:`autoexp.store.open_store` picks one from a URL. One contract suite
(``tests/autoexp/store/test_contract.py``) runs over all three.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from ..errors import StoreError

__all__ = [
    "Columns",
    "Encoded",
    "Item",
    "Record",
    "Row",
    "Store",
    "check_amounts",
    "check_declared",
    "check_items",
    "check_lease",
    "check_name",
    "check_shapes",
    "columns_batch",
    "dumps",
    "redacted",
    "summed",
    "tally",
]

FloatArray = npt.NDArray[np.float64]


class Encoded(str):
    """A log record already written as strict JSON by its maker (the engine's most
    frequent records: :mod:`autoexp.records`); stores write it as it is."""

    __slots__ = ()


class Columns:
    """A batch's increments as one matrix: row ``i`` holds item ``i``'s amounts, one
    column per cell of the state (``fields``: each field's ``(n, size)`` array, its
    columns in flat index order). Each item of the batch takes :meth:`row` ``i`` as its
    entries. Stores take such a batch whole (:func:`columns_batch`): SQLite and memory add
    the applied items' rows up with a few numpy calls (:func:`tally`), Redis sends the
    matrix's non-zero cells to its script, instead of entry by entry. Anything else reads
    a row's entries (its non-zero amounts) as it would a list's."""

    __slots__ = ("_entries", "cells", "matrix", "n", "widths")

    def __init__(self, n: int, fields: Mapping[str, npt.ArrayLike]) -> None:
        arrays = {
            name: np.asarray(a, dtype=np.float64).reshape(n, -1) for name, a in fields.items()
        }
        self.n = n
        self.widths = {name: a.shape[1] for name, a in arrays.items()}
        self.matrix = np.concatenate(list(arrays.values()), axis=1) if arrays else np.zeros((n, 0))
        # column -> (field, flat index)
        self.cells = [(name, j) for name, w in self.widths.items() for j in range(w)]
        self._entries: list[list[tuple[str, int, float]]] | None = None

    def row(self, i: int) -> Row:
        return Row(self, i)

    def entries(self) -> list[list[tuple[str, int, float]]]:
        """Each row's ``(field, flat index, amount)`` entries, zeros left out (made once)."""
        if self._entries is None:
            out: list[list[tuple[str, int, float]]] = [[] for _ in range(self.n)]
            rows, cols = np.nonzero(self.matrix)
            values = self.matrix[rows, cols].tolist()
            cells = self.cells
            for r, c, v in zip(rows.tolist(), cols.tolist(), values, strict=True):
                out[r].append((*cells[c], v))
            self._entries = out
        return self._entries


class Row(Sequence[tuple[str, int, float]]):
    """Row ``at`` of a :class:`Columns` batch as an item's entries: a sequence of
    ``(field, flat index, amount)``."""

    __slots__ = ("at", "columns")

    def __init__(self, columns: Columns, at: int) -> None:
        self.columns = columns
        self.at = at

    def __getitem__(self, i: Any) -> Any:
        return self.columns.entries()[self.at][i]

    def __len__(self) -> int:
        return len(self.columns.entries()[self.at])

    def __iter__(self) -> Iterator[tuple[str, int, float]]:
        return iter(self.columns.entries()[self.at])


#: A log record: a mapping (encoded by :func:`dumps`) or its JSON text.
Record = Mapping[str, Any] | Encoded
#: One reward of a batch: its once id, its (field, flat index, amount) entries, its record.
Item = tuple[str, Sequence[tuple[str, int, float]], Record]


class UnitsInBatches:
    """A store's ``assign`` as a batch of one: the store implements :meth:`assign_many`,
    and its units are checked with :func:`check_units` before anything is written."""

    def assign(self, experiment: str, unit: str, value: str, *, unless: str | None = None) -> str:
        return self.assign_many(experiment, [(unit, value, unless)])[0]

    def assign_many(
        self, experiment: str, items: Sequence[tuple[str, str, str | None]]
    ) -> list[str]:
        raise NotImplementedError


def check_units(items: Sequence[tuple[str, str, str | None]]) -> None:
    """Every unit of an ``assign_many`` batch (before anything of it is written)."""
    for unit, _, _ in items:
        check_name("store.assign unit", unit)


class Store(Protocol):
    """What the engine needs from a store (see the module docstring)."""

    url: str

    def declare(self, experiment: str, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Create the state's arrays as zeros if absent; refuse different shapes."""
        ...

    def read(self, experiment: str) -> dict[str, FloatArray]:
        """The state's arrays (copies); ``{}`` if never declared."""
        ...

    def read_meta(
        self, experiment: str, names: Sequence[str]
    ) -> tuple[dict[str, FloatArray], list[str | None]]:
        """:meth:`read` and :meth:`get` of each of ``names``, together (one round trip
        on Redis): what a replica reads at every refresh."""
        ...

    def add(
        self,
        experiment: str,
        amounts: Mapping[str, npt.ArrayLike],
        *,
        at: Mapping[str, npt.ArrayLike] | None = None,
        once: str | None = None,
        record: Record | None = None,
    ) -> bool:
        """Add ``amounts`` to the state, atomically, and append ``record`` to the log.

        Dense: ``amounts[name]`` has the array's shape. Sparse: ``at[name]`` holds flat
        indices and ``amounts[name]`` the values added there (repeats add up). With
        ``once``, an id already applied makes this a no-op returning ``False``; the
        increments, the id and the record are written together or not at all.
        """
        ...

    def add_many(self, experiment: str, items: Sequence[Item]) -> list[bool]:
        """Many ``add`` s in one store call (one transaction, one Redis round trip).

        Each item is ``(once, entries, record)``: an id, ``(field, flat index, amount)``
        entries and a log record; each is applied atomically and at most once, exactly
        as ``add(..., once=..., record=...)`` would; returns which were applied. Every
        entry is checked first: a bad one refuses the whole batch with nothing written.
        """
        ...

    def assign(self, experiment: str, unit: str, value: str, *, unless: str | None = None) -> str:
        """The unit's value: set to ``value`` if it has none (or has ``unless``); returns
        what is stored after the call (first exposure wins)."""
        ...

    def assign_many(
        self, experiment: str, items: Sequence[tuple[str, str, str | None]]
    ) -> list[str]:
        """:meth:`assign` of each ``(unit, value, unless)``, in order, in one store call
        (one transaction, one Redis round trip); what is stored for each unit after its
        own item (a unit repeated in the batch sees the earlier items' outcome)."""
        ...

    def append(self, experiment: str, records: Sequence[Record]) -> None:
        """Append records to the log, in order, in one write."""
        ...

    def records(
        self, experiment: str, *, start: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The log from position ``start`` (0-based), at most ``limit`` records."""
        ...

    def lines(self, experiment: str, *, start: int = 0, limit: int | None = None) -> list[str]:
        """:meth:`records` as the JSON texts they are stored as, unparsed (for readers
        that need a few fields of most records: :func:`autoexp.records.outline`)."""
        ...

    def get(self, experiment: str, name: str) -> str | None: ...

    def set(self, experiment: str, name: str, value: str) -> None: ...

    def hold(self, experiment: str, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``holder``, for ``ttl_s`` seconds from
        now: ``True`` if ``holder`` holds it after the call (it was free, its time had run
        out, or it was ``holder``'s already), ``False`` if another holder's time has not
        run out. One atomic step, so two replicas never both hold it (on one machine's
        clock for SQLite; Redis's own clock for Redis). A chore one replica should do for
        all (reading the whole log to expire rewards) goes to whoever holds its lease."""
        ...

    def release(self, experiment: str, name: str, holder: str) -> bool:
        """Give up the lease ``name`` if ``holder`` has it, so another replica can take it
        at once rather than when its time runs out (a replica shutting down calls this):
        ``True`` if ``holder`` held it until this call, ``False`` if it did not (it was
        free, another's, or its time had run out); a lease another holder took is left
        alone."""
        ...

    def experiments(self) -> list[str]:
        """Names of the experiments with anything stored, sorted."""
        ...

    def close(self) -> None: ...


_CONTROL = re.compile("[\x00-\x1f]")  # one search instead of a generator over characters


def check_lease(where: str, experiment: object, name: object, holder: object) -> None:
    """A lease call's (``store.hold``, ``store.release``) names, before anything is read."""
    check_name(f"{where} experiment", experiment)
    check_name(f"{where} name", name)
    check_name(f"{where} holder", holder)


def check_hold(experiment: object, name: object, holder: object, ttl_s: object) -> float:
    """A :meth:`Store.hold` call's names and time (before anything is read)."""
    check_lease("store.hold", experiment, name, holder)
    if (
        isinstance(ttl_s, bool)
        or not isinstance(ttl_s, int | float)
        or not math.isfinite(ttl_s)
        or not 0.001 <= ttl_s <= 86_400
    ):
        raise StoreError(
            f"store.hold ttl_s: must be a number of seconds in [0.001, 86400] (got {ttl_s!r})"
        )
    return float(ttl_s)


def check_name(where: str, name: object) -> str:
    """Experiment, field and unit names: non-empty strings without control characters;
    experiment names also without braces (Redis hash tags)."""
    bad = not isinstance(name, str) or not name or _CONTROL.search(name) is not None
    if not bad and "experiment" in where and ("{" in str(name) or "}" in str(name)):
        bad = True
    if bad:
        raise StoreError(
            f"{where}: must be a non-empty string without control characters or braces "
            f"(got {name!r})"
        )
    return str(name)


def check_amounts(
    experiment: str,
    shapes: Mapping[str, tuple[int, ...]],
    amounts: Mapping[str, npt.ArrayLike],
    at: Mapping[str, npt.ArrayLike] | None,
) -> dict[str, tuple[npt.NDArray[np.int64], FloatArray]]:
    """Validate an add against the declared shapes: ``{name: (flat indices, values)}``.

    Raises :class:`StoreError` (nothing is written) for an undeclared experiment or
    field, a wrong shape, an index out of range, or a non-finite amount.
    """
    if not shapes:
        raise StoreError(f"store: experiment {experiment!r} has no declared state")
    out: dict[str, tuple[npt.NDArray[np.int64], FloatArray]] = {}
    for name, amount in amounts.items():
        if name not in shapes:
            raise StoreError(
                f"store.add: {experiment!r} has no field {name!r}; declared: {sorted(shapes)}"
            )
        values = np.asarray(amount, dtype=np.float64)
        size = math.prod(shapes[name])
        if at is not None and name in at:
            index = np.asarray(at[name]).astype(np.int64, copy=False).ravel()
            values = values.ravel()
            if index.shape != values.shape:
                raise StoreError(
                    f"store.add: {name!r}: {index.size} indices for {values.size} amounts"
                )
            if index.size and (index.min() < 0 or index.max() >= size):
                raise StoreError(f"store.add: {name!r}: index out of range 0..{size - 1}")
        else:
            if values.shape != tuple(shapes[name]):
                raise StoreError(
                    f"store.add: {name!r} has shape {tuple(shapes[name])} (got {values.shape})"
                )
            values = values.ravel()
            index = np.arange(size, dtype=np.int64)
        if not np.all(np.isfinite(values)):
            raise StoreError(f"store.add: {name!r}: amounts must be finite")
        out[name] = (index, values)
    return out


def check_shapes(where: str, shapes: Mapping[str, Iterable[int]]) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, shape in shapes.items():
        check_name(f"{where} field", name)
        dims = tuple(int(d) for d in shape)
        if not dims or any(d < 1 for d in dims):
            raise StoreError(f"{where}: {name!r}: shape must be positive sizes (got {dims})")
        out[name] = dims
    return out


def check_items(
    experiment: str, shapes: Mapping[str, tuple[int, ...]], items: Sequence[Item]
) -> list[str]:
    """Validate a batch for :meth:`Store.add_many`; its records as JSON lines."""
    if not shapes:
        raise StoreError(f"store: experiment {experiment!r} has no declared state")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    lines = []
    for n, (once, entries, record) in enumerate(items):
        if not isinstance(once, str) or not once:
            raise StoreError(f"store.add_many: item {n}: once must be a non-empty string")
        for name, index, amount in entries:
            size = sizes.get(name)
            if size is None:
                raise StoreError(f"store.add_many: item {n}: {experiment!r} has no field {name!r}")
            if not 0 <= index < size:
                raise StoreError(f"store.add_many: item {n}: {name!r}: index {index} out of range")
            if not math.isfinite(amount):
                raise StoreError(f"store.add_many: item {n}: {name!r}: amounts must be finite")
        lines.append(dumps(record))
    return lines


def tally(
    experiment: str,
    shapes: Mapping[str, tuple[int, ...]],
    items: Sequence[Item],
    seen: Container[str] = frozenset(),
) -> tuple[list[str], list[bool], dict[tuple[str, int], float]]:
    """Validate a batch for :meth:`Store.add_many` and sum it: its records as JSON lines,
    which items to apply (``once`` neither in ``seen`` nor earlier in the batch), and each
    cell's total over those.

    The same checks as :func:`check_items`, in the one pass over the entries that
    summing needs: what the pass does not look at on its own (a field or an index that
    does not exist, an amount that is not finite) shows in the cells and totals it
    builds, and then :func:`check_items` names the item at fault. A separate check
    walked every entry of the batch a second time."""
    if not shapes:
        raise StoreError(f"store: experiment {experiment!r} has no declared state")
    summed_columns = _tally_columns(shapes, items, seen)
    if summed_columns is not None:
        return summed_columns
    totals: dict[tuple[str, int], float] = {}
    lines, apply, fresh = [], [], set()
    skipped = False
    for once, entries, record in items:
        if not isinstance(once, str) or not once:
            check_items(experiment, shapes, items)  # raises, naming the item
        lines.append(dumps(record))
        if once in seen or once in fresh:
            apply.append(False)
            skipped = True
            continue
        fresh.add(once)
        apply.append(True)
        for name, index, amount in entries:
            key = (name, index)
            totals[key] = totals.get(key, 0.0) + amount
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    for (name, index), total in totals.items():
        size = sizes.get(name)
        if size is None or not 0 <= index < size or not math.isfinite(total):
            check_items(experiment, shapes, items)  # raises, naming the item
            raise StoreError(f"store.add_many: {name!r}: amounts must be finite (their sum)")
    if skipped:  # not summed, but a bad entry in them refuses the batch all the same
        check_items(experiment, shapes, items)
    return lines, apply, totals


def columns_batch(
    shapes: Mapping[str, tuple[int, ...]], items: Sequence[Item]
) -> tuple[Columns, list[int]] | None:
    """The :class:`Columns` every item of a batch takes its entries from, and each item's
    row, if the batch can be taken as it is: every field declared with its size, every
    amount finite, every id a non-empty string. ``None`` otherwise (and for a batch of
    plain entries): the checks entry by entry (:func:`check_items`) then name what is
    wrong."""
    first = items[0][1] if items else None
    if type(first) is not Row:
        return None
    columns = first.columns
    rows = []
    for once, entries, _ in items:
        if type(entries) is not Row or entries.columns is not columns:
            return None
        if not isinstance(once, str) or not once:
            return None
        rows.append(entries.at)
    for name, width in columns.widths.items():
        shape = shapes.get(name)
        if shape is None or width != math.prod(shape):
            return None
    if not np.all(np.isfinite(columns.matrix[rows])):
        return None
    return columns, rows


def _tally_columns(
    shapes: Mapping[str, tuple[int, ...]], items: Sequence[Item], seen: Container[str]
) -> tuple[list[str], list[bool], dict[tuple[str, int], float]] | None:
    """:func:`tally` of a :func:`columns_batch`: the applied rows summed per cell with
    numpy, in item order (a cumulative sum, so the totals are the very floats that adding
    entry by entry gives); ``None`` for any other batch."""
    batch = columns_batch(shapes, items)
    if batch is None:
        return None
    columns, rows = batch
    lines, apply, fresh = [], [], set()
    for once, _, record in items:
        lines.append(dumps(record))
        new = once not in seen and once not in fresh
        if new:
            fresh.add(once)
        apply.append(new)
    take = [r for r, a in zip(rows, apply, strict=True) if a]
    if not take:
        return lines, apply, {}
    part = columns.matrix[take]
    touched = np.flatnonzero(np.any(part != 0.0, axis=0))
    with np.errstate(over="ignore", invalid="ignore"):  # an infinite sum is refused below
        sums = np.cumsum(part[:, touched], axis=0)[-1].tolist()
    cells = columns.cells
    totals = {cells[c]: v for c, v in zip(touched.tolist(), sums, strict=True)}
    for (name, _), v in totals.items():
        if not math.isfinite(v):
            raise StoreError(f"store.add_many: {name!r}: amounts must be finite (their sum)")
    return lines, apply, totals


def check_declared(
    experiment: str, have: Mapping[str, tuple[int, ...]], wanted: Mapping[str, tuple[int, ...]]
) -> None:
    """Refuse a field declared before with another shape."""
    for name, shape in wanted.items():
        if name in have and have[name] != shape:
            raise StoreError(
                f"store.declare: {experiment!r}.{name} has shape {have[name]} "
                f"(asked {shape}): a different policy or arm count on the same store; "
                "a changed experiment starts afresh under a new name (its evidence so far "
                "was gathered for the old alternatives), the old one's state kept"
            )


def summed(index: npt.NDArray[np.int64], values: FloatArray) -> dict[int, float]:
    """Amounts at repeated indices added up: one write per distinct index."""
    out: dict[int, float] = {}
    for i, v in zip(index.tolist(), values.tolist(), strict=True):
        out[i] = out.get(i, 0.0) + v
    return out


def dumps(record: Record) -> str:
    """A log record as strict JSON (numpy numbers as plain ones; NaN refused)."""
    if type(record) is Encoded:
        return record
    try:
        return _ENCODER.encode(record)
    except (TypeError, ValueError) as e:
        raise StoreError(f"store: record is not JSON-serialisable ({e})") from None


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# one encoder for every record (json.dumps builds one per call when given options)
_ENCODER = json.JSONEncoder(default=_plain, allow_nan=False, separators=(",", ":"))


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (a store URL printed in a log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    where = parts.netloc.rpartition("@")[2]  # as written: an IPv6 host's brackets, any port
    return urlunsplit(parts._replace(netloc=f"{user}:***@{where}"))
