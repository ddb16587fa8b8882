"""``redis://host:port/db``: state shared by many replicas through one Redis.

Every key of an experiment carries its name as a hash tag (``autoexp:{name}:state``),
so one experiment lives in one slot and Redis Cluster can run the scripts. An ``add`` is
one Lua script: the ``once`` id (``SET NX`` with a time to live), every increment
(``HINCRBYFLOAT``) and the log record (``XADD`` to a Redis Stream) are applied together
or not at all, so a client that retries after a timeout never doubles an update. The log
is a Stream that learner processes can consume.

URL options: ``?socket_timeout_s=2&connect_timeout_s=1&once_ttl_s=604800`` (how long a
reward id is remembered: 7 days by default).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import numpy as np
import numpy.typing as npt
import redis

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
    redacted,
    summed,
    tally,
)

__all__ = ["RedisStore"]

# Redis does not roll a script back when a command in it fails, and HINCRBYFLOAT fails
# on a total that is not a finite number: both scripts check every total first and write
# nothing if one would not be finite (the name of its field, then the cell index, in
# "field:index" keys).
_FINITE = """
local function refuse_unless_finite(state, cells, amounts)
  for k, cell in ipairs(cells) do
    local total = tonumber(redis.call('HGET', state, cell) or '0') + amounts[k]
    if total ~= total or total == math.huge or total == -math.huge then
      local field = string.match(cell, '^(.*):%d+$') or cell
      return redis.error_reply("'" .. field .. "': amounts must be finite (their sum)")
    end
  end
  return nil
end
"""
_ADD = (
    _FINITE
    + """
if ARGV[1] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local cells, amounts = {}, {}
for i = 3, #ARGV, 2 do
  cells[#cells + 1] = ARGV[i]
  amounts[#amounts + 1] = tonumber(ARGV[i + 1])
end
local refused = refuse_unless_finite(KEYS[1], cells, amounts)
if refused then return refused end
if ARGV[1] ~= '' then redis.call('SET', KEYS[3], '1', 'EX', ARGV[1]) end
for k, cell in ipairs(cells) do redis.call('HINCRBYFLOAT', KEYS[1], cell, ARGV[2 + 2 * k]) end
if ARGV[2] ~= '' then redis.call('XADD', KEYS[2], '*', 'r', ARGV[2]) end
return 1
"""
)
_ADD_MANY = (
    _FINITE
    + """
-- KEYS: state, log, then the once key of each item to apply. ARGV[1]: the once keys' time
-- to live; ARGV[2]: m, the number of cells; then the m cells ("field:index"), their m
-- totals over the items (summed by the client, as %.17g), and the items' records. If an
-- item's once key exists (applied before), nothing is written and the answer lists
-- those items (from 0): the client takes them out, sums again and asks again. Otherwise
-- every total is checked, each once key set, each record logged and each total added.
-- (one EXISTS of up to 1,000 keys first: nearly always none of them exists)
for start = 3, #KEYS, 1000 do
  local last = math.min(start + 999, #KEYS)
  if redis.call('EXISTS', unpack(KEYS, start, last)) > 0 then
    local seen = {}
    for i = 3, #KEYS do
      if redis.call('EXISTS', KEYS[i]) == 1 then seen[#seen + 1] = i - 3 end
    end
    return seen
  end
end
local m = tonumber(ARGV[2])
local cells, totals = {}, {}
for k = 1, m do
  cells[k] = ARGV[2 + k]
  totals[k] = tonumber(ARGV[2 + m + k])
end
local refused = refuse_unless_finite(KEYS[1], cells, totals)
if refused then return refused end
for i = 3, #KEYS do redis.call('SET', KEYS[i], '1', 'EX', ARGV[1]) end
for i = 3 + 2 * m, #ARGV do redis.call('XADD', KEYS[2], '*', 'r', ARGV[i]) end
for k = 1, m do redis.call('HINCRBYFLOAT', KEYS[1], cells[k], ARGV[2 + m + k]) end
return {}
"""
)
_APPEND = """
for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'r', ARGV[i]) end
return #ARGV
"""
# Units' assignments, in order: ARGV holds (unit, value, "1" if unless is given, unless)
# for each; a unit without one, or with ``unless``, is set to value; each unit's value
# after its own item is answered.
_ASSIGN = """
local out = {}
for i = 1, #ARGV, 4 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if (not cur) or (ARGV[i + 2] == '1' and cur == ARGV[i + 3]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    cur = ARGV[i + 1]
  end
  out[#out + 1] = cur
end
return out
"""
# A page of the log: XRANGE from ARGV[1] ("-" or "(" and the id after which to read), at
# most ARGV[2] entries, answered flat: how many entries, the last one's id, then (ARGV[3]
# "1") each entry's record. redis-py turns XRANGE's nested answer into a tuple and a dict
# per entry in Python (about 4 us of the client's CPU per record with hiredis, 13
# without); a flat list of strings costs it about 0.3.
_PAGE_SCRIPT = """
local page = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local out = {#page, ''}
if #page == 0 then return out end
out[2] = page[#page][1]
if ARGV[3] == '1' then
  for i = 1, #page do
    local fields, line = page[i][2], nil
    for j = 1, #fields, 2 do
      if fields[j] == 'r' then line = fields[j + 1] end
    end
    if line == nil then return redis.error_reply('log entry ' .. page[i][1] .. ' has no r') end
    out[#out + 1] = line
  end
end
return out
"""
_INDEX = "autoexp:experiments"
# KEYS[1]: the lease; ARGV: holder, time to live (ms). Redis's clock decides when it ran out.
_HOLD = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def _errors(where: str) -> Any:
    """Redis failures as :class:`StoreError` naming the operation."""
    return _Wrap(where)


_PAGE = 10_000  # stream entries per XRANGE


class _Wrap:
    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if isinstance(error, redis.RedisError):
            raise StoreError(f"store ({self.where}): Redis failed: {error}") from error


class RedisStore(UnitsInBatches):
    """The :class:`~autoexp.store.base.Store` protocol on Redis."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 (read to check: redis-py's own error is a ValueError)
        except ValueError as e:  # not a number, or past 65535
            raise ConfigError(f"store: bad port in {redacted(url)!r} ({e})") from None
        db = parts.path.strip("/")
        if db and not (db.isascii() and db.isdigit()):  # redis-py took it as database 0
            raise ConfigError(
                f"store: the database in {redacted(url)!r} must be a number (got {db!r}), "
                "as in redis://host:6379/0"
            )
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            socket_timeout = float(options.pop("socket_timeout_s", 2.0))
            connect_timeout = float(options.pop("connect_timeout_s", 1.0))
            self.once_ttl_s = int(options.pop("once_ttl_s", 7 * 24 * 3600))
        except ValueError as e:
            raise ConfigError(f"store: bad option in {redacted(url)!r} ({e})") from None
        if options:
            raise ConfigError(
                f"store: unknown option(s) {sorted(options)} in {redacted(url)!r}; accepted: "
                "socket_timeout_s, connect_timeout_s, once_ttl_s"
            )
        self.url = url
        base = url.split("?", 1)[0]
        self._r = redis.Redis.from_url(
            base,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            decode_responses=True,
        )
        # per experiment: (the position after the last record read, that record's id)
        self._read_at: dict[str, tuple[int, str]] = {}
        self._add = self._r.register_script(_ADD)
        self._add_many = self._r.register_script(_ADD_MANY)
        self._append = self._r.register_script(_APPEND)
        self._assign = self._r.register_script(_ASSIGN)
        self._page = self._r.register_script(_PAGE_SCRIPT)
        self._hold = self._r.register_script(_HOLD)
        self._release = self._r.register_script(_RELEASE)
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        self._indexed: set[str] = set()  # experiments this client has listed in _INDEX

    @staticmethod
    def _key(experiment: str, what: str) -> str:
        return f"autoexp:{{{experiment}}}:{what}"

    def _index(self, experiment: str) -> None:
        """List the experiment among those with anything stored, once per client (a
        round trip: about 90 us of this client's CPU on the benchmarks' machine); declare
        lists it every time, so an engine re-declaring after a restart lists it again."""
        if experiment not in self._indexed:
            self._r.sadd(_INDEX, experiment)
            self._indexed.add(experiment)

    def _load_shapes(
        self, experiment: str, raw: dict[str, str] | None = None
    ) -> dict[str, tuple[int, ...]]:
        if raw is None:
            raw = cast(dict[str, str], self._r.hgetall(self._key(experiment, "shapes")))
        shapes = {f: tuple(int(d) for d in json.loads(s)) for f, s in raw.items()}
        self._shapes[experiment] = shapes
        return shapes

    def declare(self, experiment: str, shapes: Mapping[str, tuple[int, ...]]) -> None:
        check_name("store.declare experiment", experiment)
        wanted = check_shapes("store.declare", shapes)
        key = self._key(experiment, "shapes")
        with _errors("declare"):
            for name, shape in wanted.items():
                self._r.hsetnx(key, name, json.dumps(shape))
            self._r.sadd(_INDEX, experiment)
            self._indexed.add(experiment)
            have = self._load_shapes(experiment)
        check_declared(experiment, have, wanted)

    def read(self, experiment: str) -> dict[str, FloatArray]:
        return self.read_meta(experiment, ())[0]

    def read_meta(
        self, experiment: str, names: Sequence[str]
    ) -> tuple[dict[str, FloatArray], list[str | None]]:
        with _errors("read"):
            pipe = self._r.pipeline(transaction=False)
            pipe.hgetall(self._key(experiment, "shapes"))
            pipe.hgetall(self._key(experiment, "state"))
            if names:
                pipe.hmget(self._key(experiment, "meta"), list(names))
            raw_shapes, raw, *meta = pipe.execute()
        shapes = self._load_shapes(experiment, raw_shapes)
        out = {name: np.zeros(math.prod(shape)) for name, shape in shapes.items()}
        for key, value in raw.items():
            name, _, idx = key.rpartition(":")
            if name in out:
                out[name][int(idx)] = float(value)
        values = [None if v is None else str(v) for v in meta[0]] if names else []
        return {name: out[name].reshape(shape) for name, shape in shapes.items()}, values

    def add(
        self,
        experiment: str,
        amounts: Mapping[str, npt.ArrayLike],
        *,
        at: Mapping[str, npt.ArrayLike] | None = None,
        once: str | None = None,
        record: Record | None = None,
    ) -> bool:
        line = dumps(record) if record is not None else ""
        with _errors("add"):
            shapes = self._shapes.get(experiment) or {}
            if not shapes or not set(amounts) <= set(shapes):  # declared elsewhere since
                shapes = self._load_shapes(experiment)
            checked = check_amounts(experiment, shapes, amounts, at)
            args: list[str] = ["" if once is None else str(self.once_ttl_s), line]
            for name, (index, values) in checked.items():
                for i, v in summed(index, values).items():
                    args += [f"{name}:{i}", repr(v)]
            keys = [
                self._key(experiment, "state"),
                self._key(experiment, "log"),
                self._key(experiment, f"once:{once}"),
            ]
            return bool(self._add(keys=keys, args=args))

    def add_many(self, experiment: str, items: Sequence[Item]) -> list[bool]:
        # Checked and summed here, as SQLite does (base.tally: the same totals to the
        # bit), and sent as one script call of plain arguments: the items' once keys and
        # records, and one total per cell. The script refuses the whole call if any of
        # them was applied before (rare: a reward sent again); those are then taken out
        # and the rest summed and sent again. Summing in Lua, entry by entry from a JSON
        # batch, cost Redis about twice its CPU per reward, and the client as much again
        # to encode the batch.
        if not items:
            return []
        seen: set[str] = set()
        with _errors("add_many"):
            while True:
                try:
                    lines, apply, totals = tally(
                        experiment, self._shapes.get(experiment) or {}, items, seen
                    )
                except StoreError:  # a field declared since (by another process)?
                    lines, apply, totals = tally(
                        experiment, self._load_shapes(experiment), items, seen
                    )
                fresh = [n for n, a in enumerate(apply) if a]
                if not fresh:
                    return apply
                keys = [self._key(experiment, "state"), self._key(experiment, "log")]
                keys += [self._key(experiment, f"once:{items[n][0]}") for n in fresh]
                cells = [f"{name}:{index}" for name, index in totals]
                sums = [f"{v:.17g}" for v in totals.values()]
                args = [str(self.once_ttl_s), str(len(cells)), *cells, *sums]
                args += [lines[n] for n in fresh]
                before = self._add_many(keys=keys, args=args)
                if not before:
                    return apply
                again = {items[fresh[int(j)]][0] for j in before}
                if again <= seen:  # cannot happen: each round takes at least one out
                    raise StoreError("store.add_many: Redis named no new item applied before")
                seen |= again

    def assign_many(
        self, experiment: str, items: Sequence[tuple[str, str, str | None]]
    ) -> list[str]:
        check_units(items)
        if not items:
            return []
        args = []
        for unit, value, unless in items:
            args += [unit, value, "0" if unless is None else "1", unless or ""]
        with _errors("assign"):
            # one script for the batch, not a pipeline of one per unit: redis-py packs one
            # command, and a pipeline with a script asks SCRIPT EXISTS first (a round trip)
            out = self._assign(keys=[self._key(experiment, "assign")], args=args)
            self._index(experiment)
        return [str(x) for x in out]

    def append(self, experiment: str, records: Sequence[Record]) -> None:
        check_name("store.append experiment", experiment)
        lines = [dumps(r) for r in records]
        with _errors("append"):
            # one script, not one XADD per record: atomic, and the client packs one
            # argument per record instead of a command (and called as it is: a pipeline
            # holding a script asks SCRIPT EXISTS first, one more round trip)
            self._append(keys=[self._key(experiment, "log")], args=lines)
            self._index(experiment)

    def records(
        self, experiment: str, *, start: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines(experiment, start=start, limit=limit)]

    def lines(self, experiment: str, *, start: int = 0, limit: int | None = None) -> list[str]:
        # A stream has no positions, only ids: this client remembers the id after the last
        # position it read, so reading on from there (expire's passes, paged exports) asks
        # only for new entries; any other start pages from the beginning to it, once.
        key = self._key(experiment, "log")
        out: list[str] = []
        with _errors("records"):
            pos, after = self._read_at.get(experiment, (0, "-"))
            if start < pos:
                pos, after = 0, "-"
            while pos < start or limit is None or len(out) < limit:
                skipping = pos < start
                want = min(start - pos if skipping else _PAGE, _PAGE)
                if not skipping and limit is not None:
                    want = min(want, limit - len(out))
                low = after if after == "-" else f"({after}"
                # skipped entries' records are not sent, only their count and last id
                answer = self._page(keys=[key], args=[low, want, "0" if skipping else "1"])
                n = int(answer[0])
                if n == 0:
                    break
                pos, after = pos + n, str(answer[1])
                if not skipping:
                    out.extend(answer[2:])
                if n < want:
                    break
            self._read_at[experiment] = (pos, after)
        return out

    def get(self, experiment: str, name: str) -> str | None:
        with _errors("get"):
            value = self._r.hget(self._key(experiment, "meta"), name)
        return None if value is None else str(value)

    def set(self, experiment: str, name: str, value: str) -> None:
        check_name("store.set experiment", experiment)
        with _errors("set"):
            self._r.hset(self._key(experiment, "meta"), name, value)
            self._index(experiment)

    def hold(self, experiment: str, name: str, holder: str, ttl_s: float) -> bool:
        ttl_ms = max(1, round(check_hold(experiment, name, holder, ttl_s) * 1000))
        with _errors("hold"):
            key = self._key(experiment, f"hold:{name}")
            return bool(self._hold(keys=[key], args=[holder, ttl_ms]))

    def release(self, experiment: str, name: str, holder: str) -> bool:
        check_lease("store.release", experiment, name, holder)
        with _errors("release"):
            key = self._key(experiment, f"hold:{name}")
            return bool(self._release(keys=[key], args=[holder]))

    def experiments(self) -> list[str]:
        with _errors("experiments"):
            return sorted(str(x) for x in self._r.smembers(_INDEX))

    def close(self) -> None:
        self._r.close()
