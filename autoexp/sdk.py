"""The Python SDK: define an experiment and its alternatives in code, call it, reward it.

.. code-block:: python

    exp = autoexp.Experiment("ranker", policy="thompson-beta", explore_share=0.1,
                             store="sqlite:///x.db")

    @exp.control
    def rank_v1(query): ...

    @exp.alternative
    def rank_v2(query): ...

    answer = exp(query, unit=user_id)   # runs the chosen alternative
    exp.reward(answer.decision, 1.0)    # or later, from anywhere, with answer.decision.token

Alternatives are functions (all sync, or all ``async``: then ``await exp(...)``) or
parameter settings (``exp.setting("fast", timeout_s=2)``; ``exp.decide(...)`` returns the
decision with its ``params``). The experiment starts on its first call; after that its
alternatives are fixed. If the store fails while deciding, the call serves control and
``answer.decision`` is ``None`` (rewarding ``None`` is a no-op): a user's request never
fails because autoexp did.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies import REGISTRY, TESTS
from policies.build import named, safety_stack
from policies.safety import Guardrail

from .engine import Decision, Engine, ExperimentSpec
from .errors import ConfigError, StateError, StoreError
from .store import Store, open_store

__all__ = ["Answer", "Experiment"]

log = logging.getLogger("autoexp")


@dataclass(frozen=True)
class Answer:
    """What calling an experiment returns: the alternative's result and its decision."""

    result: Any
    decision: Decision | None


class Experiment:
    """One experiment defined in code (see the module docstring).

    Parameters
    ----------
    name : the experiment's name in the store
    policy : a name in ``policies.REGISTRY`` (``autoexp policies`` lists them)
    policy_params : the policy's hyperparameters
    explore_share : the alternatives' total share of traffic (traffic cap); ``None``: none
    conservative_alpha, conservative_delta : the conservative budget (``None``: none)
    test : a name in ``policies.TESTS`` that promotes and rolls back (``None``: never)
    test_params : its parameters (e.g. ``{"n_expected": 10_000}``)
    guardrails : :class:`policies.safety.Guardrail` s on the reward
    reward_range, refresh_every, token_ttl_s, join_window_s, default_reward : see
        :class:`autoexp.engine.ExperimentSpec`
    store : a URL (``sqlite:///x.db``, ``redis://...``) or a store; default
        ``AUTOEXP_STORE`` or ``sqlite:///autoexp.db``
    secret : token signing key(s); default ``AUTOEXP_SECRET``
    seed : seeds this process's draws
    """

    def __init__(
        self,
        name: str,
        *,
        policy: str = "thompson-beta",
        policy_params: Mapping[str, Any] | None = None,
        explore_share: float | None = 0.1,
        conservative_alpha: float | None = None,
        conservative_delta: float = 0.05,
        test: str | None = "off-policy-cs",
        test_params: Mapping[str, Any] | None = None,
        guardrails: Sequence[Guardrail] = (),
        reward_range: tuple[float, float] = (0.0, 1.0),
        refresh_every: int = 100,
        token_ttl_s: float = 7 * 24 * 3600.0,
        join_window_s: float = 24 * 3600.0,
        default_reward: float | None = None,
        store: str | Store | None = None,
        secret: Any = None,
        seed: int | None = None,
    ) -> None:
        where = f"Experiment({name!r})"
        try:
            built = named(REGISTRY, {"name": policy, **(policy_params or {})}, f"{where}.policy")
            safety: dict[str, Any] = {}
            if explore_share is not None:
                safety["explore_share"] = explore_share
            if conservative_alpha is not None:
                safety["conservative_alpha"] = conservative_alpha
                safety["conservative_delta"] = conservative_delta
            self._policy = safety_stack(built, safety, refresh=refresh_every, where=where)
            low, high = reward_range
            params = {"low": low, "high": high, **(test_params or {})}
            self._test = (
                None if test is None else named(TESTS, {"name": test, **params}, f"{where}.test")
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.name = name
        self._options = {
            "guardrails": tuple(guardrails),
            "reward_range": reward_range,
            "refresh_every": refresh_every,
            "token_ttl_s": token_ttl_s,
            "join_window_s": join_window_s,
            "default_reward": default_reward,
        }
        self._store_arg = store
        self._secret = secret
        self._seed = seed
        self._names: list[str] = []
        self._functions: list[Callable[..., Any] | None] = []
        self._params: list[dict[str, Any]] = []
        self._engine: Engine | None = None
        self._closed = False
        self.fail_open = 0

    # --- definition ---------------------------------------------------------------------

    def _add(self, name: str, fn: Callable[..., Any] | None, params: dict[str, Any]) -> None:
        if self._engine is not None:
            raise StateError(
                f"experiment {self.name!r} has started; define its alternatives before "
                "the first call"
            )
        if name in self._names:
            raise ConfigError(f"experiment {self.name!r}: alternative {name!r} defined twice")
        kinds = {inspect.iscoroutinefunction(f) for f in self._functions if f is not None}
        if fn is not None and kinds and inspect.iscoroutinefunction(fn) not in kinds:
            raise ConfigError(
                f"experiment {self.name!r}: {name!r} is "
                f"{'async' if inspect.iscoroutinefunction(fn) else 'sync'} but the others are "
                "not; make them all sync or all async"
            )
        self._names.append(name)
        self._functions.append(fn)
        self._params.append(params)

    def control(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: the control (the current behaviour). Define it first."""
        if self._names:
            raise ConfigError(
                f"experiment {self.name!r}: define the control first (before {self._names[0]!r})"
            )
        self._add(fn.__name__, fn, {})
        return fn

    def alternative(self, fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
        """Decorator (``@exp.alternative`` or ``@exp.alternative(name="v2")``): an
        alternative to try against control."""

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            if not self._names:
                raise ConfigError(
                    f"experiment {self.name!r}: define the control first (@exp.control)"
                )
            self._add(name or f.__name__, f, {})
            return f

        return register(fn) if fn is not None else register

    def setting(self, name: str, **params: Any) -> None:
        """A parameter setting as an alternative (the first one defined is control)."""
        if any(f is not None for f in self._functions):
            raise ConfigError(
                f"experiment {self.name!r}: mix of functions and settings; use one kind"
            )
        self._add(name, None, params)

    # --- running ------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine (started on first use: alternatives are fixed from then on)."""
        if self._closed:
            raise StateError(f"experiment {self.name!r} is closed")
        if self._engine is None:
            if len(self._names) < 2:
                raise StateError(
                    f"experiment {self.name!r}: needs a control and at least one alternative "
                    f"before it can run (has {self._names!r})"
                )
            store = self._store_arg
            if store is None or isinstance(store, str):
                store = open_store(store)
            spec = ExperimentSpec(
                name=self.name,
                alternatives=tuple(self._names),
                params=tuple(self._params),
                policy=self._policy,
                test=self._test,
                **self._options,  # type: ignore[arg-type]
            )
            self._engine = Engine(store, [spec], secret=self._secret, seed=self._seed)
        return self._engine

    def decide(
        self, *, unit: str | None = None, context: Sequence[float] | None = None
    ) -> Decision:
        """The decision for one request, without running anything."""
        return self.engine.decide(self.name, unit=unit, context=context)

    def _choose(
        self, unit: str | None, context: Sequence[float] | None
    ) -> tuple[Callable[..., Any], Decision | None]:
        engine = self.engine
        if self._functions[0] is None:
            raise StateError(
                f"experiment {self.name!r} has settings, not functions: use exp.decide() "
                "and its decision.params"
            )
        try:
            decision = engine.decide(self.name, unit=unit, context=context)
        except StoreError as e:  # fail open: serve control, say so
            self.fail_open += 1
            log.warning("autoexp: %s failed open to control: %s", self.name, e)
            return self._functions[0], None
        fn = self._functions[decision.arm]
        if fn is None:  # settings were mixed in after all: refuse rather than guess
            raise StateError(f"experiment {self.name!r}: {decision.alternative!r} has no function")
        return fn, decision

    def __call__(
        self,
        *args: Any,
        unit: str | None = None,
        context: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the chosen alternative on the arguments; an :class:`Answer` (awaitable when
        the alternatives are ``async``)."""
        fn, decision = self._choose(unit, context)
        if inspect.iscoroutinefunction(fn):

            async def run() -> Answer:
                return Answer(await fn(*args, **kwargs), decision)

            return run()
        return Answer(fn(*args, **kwargs), decision)

    def reward(self, decision: Decision | str | None, value: float) -> bool:
        """Record the outcome of a decision (or its token string); ``False`` if it was
        already rewarded or the decision failed open (``None``)."""
        if decision is None:
            return False
        return self.engine.reward(decision, value)

    def reward_many(self, items: Sequence[tuple[Decision | str | None, float]]) -> list[bool]:
        """Many outcomes in one store call (see :meth:`autoexp.engine.Engine.reward_many`);
        items whose decision failed open (``None``) are skipped and report ``False``."""
        real = [(n, (d, v)) for n, (d, v) in enumerate(items) if d is not None]
        done = self.engine.reward_many([item for _, item in real]) if real else []
        out = [False] * len(items)
        for (n, _), ok in zip(real, done, strict=True):
            out[n] = ok
        return out

    def status(self) -> dict[str, Any]:
        """Allocation, lifecycle and counters as this process sees them."""
        return {**self.engine.status(self.name), "fail_open": self.fail_open}

    def close(self) -> None:
        """Write pending decisions to the log and stop the background writer (also done
        at interpreter exit); the experiment can not be called afterwards."""
        if self._engine is not None:
            self._engine.close()
            self._engine.store.close()
            self._engine = None
            self._closed = True

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
