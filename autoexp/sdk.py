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

With ``client=autoexp.Client(url)`` (or ``client.experiment(name)``) the decisions come
from a running sidecar instead: the experiment's definition (policy, safety, test) is the
sidecar's config, the functions are defined here under the sidecar's alternative names,
and an unreachable sidecar serves control the same way.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from policies import CONTEXTUAL, REGISTRY, TESTS
from policies.build import named, safety_stack
from policies.safety import Guardrail

from .config import drift_detector
from .context import ContextSpec, parse_context, policy_defaults
from .engine import Decision, Engine, ExperimentSpec
from .errors import ConfigError, StateError, StoreError
from .experiment import check_servable
from .generate import parse_generation
from .store import Store, open_store
from .throttle import Throttle

if TYPE_CHECKING:
    from .client import Client

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
    policy : a name in ``policies.REGISTRY`` or ``policies.CONTEXTUAL`` (``autoexp
        policies`` lists them)
    policy_params : the policy's hyperparameters (a contextual policy's ``dim`` defaults
        to the context's width, ``low`` and ``high`` to ``reward_range``)
    context : named features, as the config's ``context`` table (``{"features": [{"name":
        "device", "one_hot": ["mobile", "desktop"]}]}``, see :mod:`autoexp.context`) or a
        :class:`~autoexp.context.ContextSpec`; then calls take ``context={"device": ...}``
    drift : after a promotion, watch the champion's reward and reopen exploration when it
        drops: ``True`` (Page-Hinkley's defaults) or ``{"tolerance": ..., "threshold":
        ..., "min_n": ...}`` (:class:`policies.drift.PageHinkley`)
    generate : generated alternatives, as the config's ``generate`` table (``{"space":
        {"timeout_ms": {"low": 50, "high": 5000, "log": True}}, "challengers": 2, ...}``,
        see :mod:`autoexp.generate`); then define only the control, as a setting that
        sets every parameter (``exp.setting("current", timeout_ms=200)``), and use
        ``exp.decide().params``
    explore_share : the alternatives' total share of traffic (traffic cap); ``None``: none
    conservative_alpha, conservative_delta : the conservative budget (``None``: none)
    test : a name in ``policies.TESTS`` that promotes and rolls back (``None``: never)
    test_params : its parameters (e.g. ``{"n_expected": 10_000}``)
    guardrails : :class:`policies.safety.Guardrail` s on the reward
    reward_range, refresh_every, refresh_s, token_ttl_s, join_window_s, default_reward : see
        :class:`autoexp.engine.ExperimentSpec`
    store : a URL (``sqlite:///x.db``, ``redis://...``) or a store; default
        ``AUTOEXP_STORE`` or ``sqlite:///autoexp.db``
    secret : token signing key(s); default ``AUTOEXP_SECRET``
    seed : seeds this process's draws
    client : a :class:`~autoexp.Client` of a running sidecar that decides instead of a
        local engine (then ``store`` and ``secret`` must not be given, and the policy
        arguments are the sidecar's config, not these)
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
        refresh_s: float = 10.0,
        token_ttl_s: float = 7 * 24 * 3600.0,
        join_window_s: float = 24 * 3600.0,
        default_reward: float | None = None,
        context: Mapping[str, Any] | ContextSpec | None = None,
        drift: bool | Mapping[str, Any] | None = None,
        generate: Mapping[str, Any] | None = None,
        store: str | Store | None = None,
        secret: Any = None,
        seed: int | None = None,
        client: Client | None = None,
    ) -> None:
        where = f"Experiment({name!r})"
        if client is not None and (store is not None or secret is not None):
            raise ConfigError(
                f"{where}: a sidecar client decides with the sidecar's store and key; "
                "do not pass store or secret with client"
            )
        spec = (
            parse_context(context, f"{where}.context")
            if context is not None and not isinstance(context, ContextSpec)
            else context
        )
        try:
            _, _ = reward_range  # any pair; its numbers are the spec's to check
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}.reward_range: must be (low, high) (got {reward_range!r:.60})"
            ) from None
        if not isinstance(guardrails, Sequence) or isinstance(guardrails, str | bytes):
            raise ConfigError(
                f"{where}.guardrails: must be a sequence of Guardrail objects "
                f"(got {guardrails!r:.60})"
            )
        for key, given in (("policy_params", policy_params), ("test_params", test_params)):
            if given is not None and not isinstance(given, Mapping):
                raise ConfigError(f"{where}.{key}: must be a mapping (got {given!r:.60})")
        try:
            table = policy_defaults({"name": policy, **(policy_params or {})}, spec, reward_range)
            built = named({**REGISTRY, **CONTEXTUAL}, table, f"{where}.policy")
            safety: dict[str, Any] = {}
            if explore_share is not None:
                safety["explore_share"] = explore_share
            if conservative_alpha is not None:
                safety["conservative_alpha"] = conservative_alpha
                safety["conservative_delta"] = conservative_delta
            self._policy = safety_stack(built, safety, refresh=refresh_every, where=where)
            check_servable(self._policy, where)  # here, not at the first decision
            low, high = reward_range
            params = {"low": low, "high": high, **(test_params or {})}
            self._test = (
                None if test is None else named(TESTS, {"name": test, **params}, f"{where}.test")
            )
            detector = drift_detector(drift, f"{where}.drift")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.name = name
        self._options = {
            "guardrails": tuple(guardrails),
            "reward_range": reward_range,
            "refresh_every": refresh_every,
            "refresh_s": refresh_s,
            "token_ttl_s": token_ttl_s,
            "join_window_s": join_window_s,
            "default_reward": default_reward,
            "context": spec,
            "drift": detector,
        }
        self._store_arg = store
        self._secret = secret
        self._seed = seed
        self._names: list[str] = []
        self._functions: list[Callable[..., Any] | None] = []
        self._params: list[dict[str, Any]] = []
        self._engine: Engine | None = None
        self._generate = generate
        self._client = client
        self._started = False  # with a client: checked against the sidecar's definition
        self._closed = False
        self.fail_open = 0
        self._fail_open_said = Throttle()  # logged at most every 10 s, counted every time

    # --- definition ---------------------------------------------------------------------

    def _add(self, name: str, fn: Callable[..., Any] | None, params: dict[str, Any]) -> None:
        if self._engine is not None or self._started:
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

    def control(self, fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
        """Decorator (``@exp.control`` or ``@exp.control(name="v1")``): the control (the
        current behaviour). Define it first."""

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            if self._names:
                raise ConfigError(
                    f"experiment {self.name!r}: define the control first "
                    f"(before {self._names[0]!r})"
                )
            self._add(name or f.__name__, f, {})
            return f

        return register(fn) if fn is not None else register

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
        if self._client is not None:
            raise ConfigError(
                f"experiment {self.name!r}: settings of a sidecar experiment are in the "
                "sidecar's config; use exp.decide() and its decision.params"
            )
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
        if self._client is not None:
            raise StateError(
                f"experiment {self.name!r} is decided by the sidecar at {self._client.url}; "
                "it has no local engine"
            )
        if self._engine is None:
            names, params = tuple(self._names), tuple(self._params)
            generate = None
            if self._generate is not None:  # the control only; the slots are generated
                if len(names) != 1 or self._functions[0] is not None:
                    raise StateError(
                        f"experiment {self.name!r} generates its alternatives: define only "
                        f"the control, as a setting (has {self._names!r})"
                    )
                where = f"Experiment({self.name!r}).generate"
                generate = parse_generation(self._generate, where, params[0])
                names = (names[0], *generate.slot_names())
                params = (params[0], *({} for _ in generate.slot_names()))
            elif len(names) < 2:
                raise StateError(
                    f"experiment {self.name!r}: needs a control and at least one alternative "
                    f"before it can run (has {self._names!r})"
                )
            store = self._store_arg
            if store is None or isinstance(store, str):
                store = open_store(store)
            spec = ExperimentSpec(
                name=self.name,
                alternatives=names,
                params=params,
                policy=self._policy,
                test=self._test,
                generate=generate,
                **self._options,  # type: ignore[arg-type]
            )
            self._engine = Engine(store, [spec], secret=self._secret, seed=self._seed)
        return self._engine

    def _sidecar(self) -> Client:
        """The client, once its definition has been checked against the functions here."""
        assert self._client is not None
        if self._closed:
            raise StateError(f"experiment {self.name!r} is closed")
        if not self._started and self._names:
            there = self._client.definition(self.name)["alternatives"]
            if list(there) != self._names:
                raise ConfigError(
                    f"experiment {self.name!r}: the functions here are {self._names!r} but "
                    f"the sidecar's alternatives are {list(there)!r}; define one function "
                    "per alternative, control first, with the same names"
                )
        self._started = True
        return self._client

    def decide(
        self, *, unit: str | None = None, context: Sequence[float] | Mapping[str, Any] | None = None
    ) -> Decision:
        """The decision for one request, without running anything."""
        if self._client is not None:
            return self._sidecar().decide(self.name, unit=unit, context=context)
        return self.engine.decide(self.name, unit=unit, context=context)

    def _functions_ready(self) -> None:
        if not self._names:
            raise StateError(
                f"experiment {self.name!r}: define the control and the alternatives first"
            )
        if self._functions[0] is None:
            raise StateError(
                f"experiment {self.name!r} has settings, not functions: use exp.decide() "
                "and its decision.params"
            )

    def _pick(self, decision: Decision | None) -> tuple[Callable[..., Any], Decision | None]:
        fn = self._functions[0] if decision is None else self._functions[decision.arm]
        if fn is None:  # settings were mixed in after all: refuse rather than guess
            name = None if decision is None else decision.alternative
            raise StateError(f"experiment {self.name!r}: {name!r} has no function")
        return fn, decision

    def _failed_open(self, error: StoreError) -> None:
        self.fail_open += 1
        if self._fail_open_said.due():  # not a line per call while the store is down
            log.warning(
                "autoexp: %s failed open to control: %s (%d failed open so far; said at most "
                "every %.0f s, all counted in status()['fail_open'])",
                self.name,
                error,
                self.fail_open,
                self._fail_open_said.every_s,
            )

    def _choose(
        self, unit: str | None, context: Sequence[float] | Mapping[str, Any] | None
    ) -> tuple[Callable[..., Any], Decision | None]:
        self._functions_ready()
        try:
            decision = self.decide(unit=unit, context=context)
        except StoreError as e:  # fail open: serve control, say so
            self._failed_open(e)
            return self._pick(None)
        return self._pick(decision)

    async def _achoose(
        self, unit: str | None, context: Sequence[float] | Mapping[str, Any] | None
    ) -> tuple[Callable[..., Any], Decision | None]:
        self._functions_ready()
        if self._client is None:  # a local engine decides in memory: no need to await
            return self._choose(unit, context)
        try:
            client = self._sidecar()
            decision = await client.adecide(self.name, unit=unit, context=context)
        except StoreError as e:
            self._failed_open(e)
            return self._pick(None)
        return self._pick(decision)

    def __call__(
        self,
        *args: Any,
        unit: str | None = None,
        context: Sequence[float] | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the chosen alternative on the arguments; an :class:`Answer` (awaitable when
        the alternatives are ``async``)."""
        if self._functions and inspect.iscoroutinefunction(self._functions[0]):

            async def run() -> Answer:
                fn, decision = await self._achoose(unit, context)
                return Answer(await fn(*args, **kwargs), decision)

            return run()
        fn, decision = self._choose(unit, context)
        return Answer(fn(*args, **kwargs), decision)

    def reward(self, decision: Decision | str | None, value: float) -> bool:
        """Record the outcome of a decision (or its token string); ``False`` if it was
        already rewarded or the decision failed open (``None``)."""
        if decision is None:
            return False
        if self._client is not None:
            return self._sidecar().reward(decision, value)
        return self.engine.reward(decision, value)

    async def areward(self, decision: Decision | str | None, value: float) -> bool:
        """:meth:`reward` for async code (over a sidecar, without blocking the loop)."""
        if decision is None:
            return False
        if self._client is not None:
            return await self._sidecar().areward(decision, value)
        return self.engine.reward(decision, value)

    def reward_many(self, items: Sequence[tuple[Decision | str | None, float]]) -> list[bool]:
        """Many outcomes in one store call (see :meth:`autoexp.engine.Engine.reward_many`);
        items whose decision failed open (``None``) are skipped and report ``False``."""
        real = [(n, (d, v)) for n, (d, v) in enumerate(items) if d is not None]
        done: list[bool] = []
        if real:
            backend = self._sidecar() if self._client is not None else self.engine
            done = backend.reward_many([item for _, item in real])
        out = [False] * len(items)
        for (n, _), ok in zip(real, done, strict=True):
            out[n] = ok
        return out

    def status(self) -> dict[str, Any]:
        """Allocation, lifecycle and counters as this process sees them (over a sidecar:
        its definition, and this process's fail-open count)."""
        if self._client is not None:
            return {**self._sidecar().definition(self.name), "fail_open": self.fail_open}
        return {**self.engine.status(self.name), "fail_open": self.fail_open}

    def close(self) -> None:
        """Write pending decisions to the log and stop the background writer (also done
        at interpreter exit); the experiment can not be called afterwards. A sidecar
        client is shared: close it yourself."""
        if self._client is not None:
            self._closed = True
        if self._engine is not None:
            self._engine.close()
            self._engine.store.close()
            self._engine = None
            self._closed = True

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
