"""A client of a running sidecar: the engine's calls over HTTP.

.. code-block:: python

    client = autoexp.Client("http://127.0.0.1:8700")
    d = client.decide("ranker", unit=user_id)        # d.alternative, d.params, d.token
    client.reward(d, 1.0)                            # or client.reward(token_string, 1.0)

    exp = client.experiment("ranker")                # the SDK's decorators, same calls
    @exp.control
    def v1(query): ...
    @exp.alternative
    def v2(query): ...
    answer = exp(query, unit=user_id)

Every call has an ``a``-prefixed coroutine twin (``adecide``, ``areward``,
``areward_many``) for async code. The sidecar's refusals come back as the engine's own
errors (:class:`~autoexp.errors.RewardError`, :class:`~autoexp.errors.UnknownExperimentError`,
:class:`~autoexp.errors.RequestError`); a sidecar that cannot be reached, times out or
reports its store failing raises :class:`~autoexp.errors.StoreError`, on which the SDK
serves control. A reward that raised may or may not have been applied: send it again
(rewards are applied once per decision).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx

from policies.build import finite

from .engine import Decision
from .errors import (
    AutoexpError,
    ConfigError,
    RequestError,
    RewardError,
    StoreError,
    UnknownExperimentError,
)

if TYPE_CHECKING:
    from .sdk import Experiment

__all__ = ["Client"]

_KINDS: dict[str, type[AutoexpError]] = {
    "RewardError": RewardError,
    "UnknownExperimentError": UnknownExperimentError,
    "RequestError": RequestError,
    "StoreError": StoreError,
}


def _token(decision: Decision | str) -> str:
    return decision.token if isinstance(decision, Decision) else decision


def _decision(body: Mapping[str, Any]) -> Decision:
    return Decision(
        id=body["id"],
        experiment=body["experiment"],
        arm=int(body["arm"]),
        alternative=body["alternative"],
        propensity=float(body["propensity"]),
        params=dict(body["params"]),
        policy=body["policy"],
        allocation_version=int(body["allocation_version"]),
        token=body["token"],
        sticky=bool(body["sticky"]),
    )


def _reward_body(items: Sequence[tuple[Decision | str, float]]) -> dict[str, Any]:
    """The request; a value JSON cannot carry (NaN, infinite, not a number) is refused
    here, as the engine would refuse it."""
    for n, (_, value) in enumerate(items):
        if finite(value) is None:
            where = f"rewards[{n}]: " if len(items) > 1 else ""
            raise RewardError(f"{where}reward: must be a finite number (got {value!r:.60})")
    return {"rewards": [{"token": _token(d), "value": v} for d, v in items]}


class Client:
    """Talks to the sidecar at ``url`` (see the module docstring).

    Parameters
    ----------
    url : the sidecar's address, ``http://host:port``
    timeout_s : seconds to wait for an answer (then :class:`StoreError`)
    connect_timeout_s : seconds to wait for a connection
    """

    def __init__(self, url: str, *, timeout_s: float = 2.0, connect_timeout_s: float = 1.0):
        try:
            parts = urlsplit(url) if isinstance(url, str) else None
            _ = None if parts is None else parts.port  # read to check: in [0, 65535]
        except ValueError as e:  # "Invalid IPv6 URL", "Port out of range 0-65535"
            raise ConfigError(
                f"Client: url must be http(s)://host:port (got {url!r}: {e})"
            ) from None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"Client: url must be http(s)://host:port (got {url!r})")
        for key, value in (("timeout_s", timeout_s), ("connect_timeout_s", connect_timeout_s)):
            seconds = None if isinstance(value, bool) else finite(value)
            if seconds is None or not seconds > 0:  # "1" was a TypeError
                raise ConfigError(f"Client: {key} must be a finite number > 0 (got {value!r})")
        self.url = url.rstrip("/")
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._http = httpx.Client(base_url=self.url, timeout=self._timeout)
        self._async: httpx.AsyncClient | None = None

    # --- the wire -------------------------------------------------------------------------

    def _answer(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code < 400:
            if body is None:
                raise StoreError(f"sidecar {self.url}: answered with no JSON body")
            return body
        message = body.get("error") if isinstance(body, dict) else None
        message = message or f"HTTP {response.status_code}"
        kind = body.get("kind") if isinstance(body, dict) else None
        if response.status_code >= 500 or kind not in _KINDS:
            raise StoreError(f"sidecar {self.url}: {message}")
        raise _KINDS[kind](message)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise StoreError(f"sidecar {self.url} unreachable: {e!r}") from None
        return self._answer(response)

    async def _acall(self, method: str, path: str, body: Any = None) -> Any:
        if self._async is None:
            self._async = httpx.AsyncClient(base_url=self.url, timeout=self._timeout)
        try:
            response = await self._async.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise StoreError(f"sidecar {self.url} unreachable: {e!r}") from None
        return self._answer(response)

    # --- the engine's calls -----------------------------------------------------------------

    def decide(
        self,
        name: str,
        *,
        unit: str | None = None,
        context: Sequence[float] | Mapping[str, Any] | None = None,
    ) -> Decision:
        """The decision for one request of experiment ``name``."""
        body = {"experiment": name, "unit": unit, "context": _context(context)}
        return _decision(self._call("POST", "/_autoexp/decide", body))

    async def adecide(
        self,
        name: str,
        *,
        unit: str | None = None,
        context: Sequence[float] | Mapping[str, Any] | None = None,
    ) -> Decision:
        body = {"experiment": name, "unit": unit, "context": _context(context)}
        return _decision(await self._acall("POST", "/_autoexp/decide", body))

    def reward(self, decision: Decision | str, value: float) -> bool:
        """Record an outcome; ``False`` if that decision was already rewarded."""
        return bool(self.reward_many([(decision, value)])[0])

    async def areward(self, decision: Decision | str, value: float) -> bool:
        return bool((await self.areward_many([(decision, value)]))[0])

    def reward_many(self, items: Sequence[tuple[Decision | str, float]]) -> list[bool]:
        """Many outcomes in one request; a bad one refuses them all, naming its index."""
        if not items:
            return []
        out = self._call("POST", "/_autoexp/rewards", _reward_body(items))
        return [bool(x) for x in out["applied"]]

    async def areward_many(self, items: Sequence[tuple[Decision | str, float]]) -> list[bool]:
        if not items:
            return []
        out = await self._acall("POST", "/_autoexp/rewards", _reward_body(items))
        return [bool(x) for x in out["applied"]]

    def definition(self, name: str) -> dict[str, Any]:
        """The experiment's alternatives, their parameters, its policy and reward range."""
        # quoted: a name may hold "/", "?", "#" or a space (the path had another meaning)
        return dict(self._call("GET", f"/_autoexp/experiments/{quote(name, safe='')}/definition"))

    def experiment(self, name: str) -> Experiment:
        """An SDK :class:`~autoexp.Experiment` whose decisions come from this sidecar:
        define its alternatives with the same decorators, named as in the sidecar's
        config."""
        from .sdk import Experiment

        return Experiment(name, client=self)

    def close(self) -> None:
        self._http.close()

    async def aclose(self) -> None:
        self._http.close()
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _context(
    context: Sequence[float] | Mapping[str, Any] | None,
) -> list[float] | dict[str, Any] | None:
    """The context as JSON for the sidecar: named feature values as an object (the
    sidecar encodes them by its config), numbers as a list."""
    if context is None:
        return None
    if isinstance(context, Mapping):
        return {str(k): v for k, v in context.items()}
    try:
        return [float(x) for x in context]
    except (TypeError, ValueError):
        raise RequestError(
            f"context: must be a sequence of numbers (got {context!r:.60})"
        ) from None
