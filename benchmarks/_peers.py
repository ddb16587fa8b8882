"""Peer bandit libraries behind one interface, for ``benchmarks/policies.py``.

A :class:`Peer` builds a fresh player for a seed (``make``), outside any timer. The player
plays every round of a strict online loop: ask the library for an arm, draw the Bernoulli
reward from a pre-drawn uniform (``1.0 if u[i] < means[arm] else 0.0``, the same code for
every library), hand the reward back. It returns the arms played, for the regret check.

Peers are imported lazily; one that is missing or fails to import is skipped with its
reason. Shims for SMPyBandits and obp are applied here, in this process only.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Peer", "Player", "load_peers"]

#: ``player(u, means) -> arms``: one round per uniform in ``u``.
Player = Callable[[list[float], list[float]], list[int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """One library's implementation of one algorithm."""

    library: str
    version: str
    algorithm: str  # "thompson" or "ucb1"
    make: Callable[[int, int], Player]  # (n_arms, seed) -> player
    note: str = ""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# --- MABWiser ---------------------------------------------------------------------------


def _mabwiser() -> list[Peer]:
    from mabwiser.mab import MAB, LearningPolicy

    def maker(policy: Callable[[], Any]) -> Callable[[int, int], Player]:
        def make(n_arms: int, seed: int) -> Player:
            mab = MAB(arms=list(range(n_arms)), learning_policy=policy(), seed=seed)

            def play(u: list[float], means: list[float]) -> list[int]:
                # predict() refuses to run before fit(), and MABWiser's UCB1 gives unpulled
                # arms index 0 (not infinity), so the usual start is one pull of each arm,
                # fitted in one call. These K rounds count among the T rounds played.
                first = list(range(n_arms))
                rewards = [1.0 if u[k] < means[k] else 0.0 for k in first]
                mab.fit(decisions=first, rewards=rewards)
                out = first + [0] * (len(u) - n_arms)
                predict, partial_fit = mab.predict, mab.partial_fit
                for i in range(n_arms, len(u)):
                    arm = predict()
                    partial_fit(decisions=[arm], rewards=[1.0 if u[i] < means[arm] else 0.0])
                    out[i] = arm
                return out

            return play

        return make

    version = _version("mabwiser")
    note = "first K rounds: one fit() of one pull per arm"
    return [
        Peer(
            library="mabwiser",
            version=version,
            algorithm="thompson",
            make=maker(LearningPolicy.ThompsonSampling),
            note=note,
        ),
        Peer(
            library="mabwiser",
            version=version,
            algorithm="ucb1",
            make=maker(lambda: LearningPolicy.UCB1(alpha=1.0)),
            note=note + "; alpha=1: mean + sqrt(2 ln t / n)",
        ),
    ]


# --- river ------------------------------------------------------------------------------


def _river() -> list[Peer]:
    from river import bandit, proba

    def maker(build: Callable[[int], Any]) -> Callable[[int, int], Player]:
        def make(n_arms: int, seed: int) -> Player:
            policy = build(seed)
            arm_ids = list(range(n_arms))

            def play(u: list[float], means: list[float]) -> list[int]:
                out = [0] * len(u)
                pull, update = policy.pull, policy.update
                for i, ui in enumerate(u):
                    arm = pull(arm_ids)
                    update(arm, 1.0 if ui < means[arm] else 0.0)
                    out[i] = arm
                return out

            return play

        return make

    version = _version("river")
    return [
        Peer(
            library="river",
            version=version,
            algorithm="thompson",
            make=maker(lambda seed: bandit.ThompsonSampling(reward_obj=proba.Beta(), seed=seed)),
            note="ThompsonSampling(reward_obj=proba.Beta())",
        ),
        Peer(
            library="river",
            version=version,
            algorithm="ucb1",
            make=maker(lambda seed: bandit.UCB(delta=1.0, seed=seed)),
            note="UCB(delta=1): mean + sqrt(2 ln t / n)",
        ),
    ]


# --- SMPyBandits ------------------------------------------------------------------------


def _smpybandits() -> list[Peer]:
    import scipy.special

    # SMPyBandits 0.9.7 predates SciPy's removal of btdtri and NumPy 2's removal of in1d.
    # btdtri(a, b, p) is the inverse of the regularised incomplete beta: betaincinv.
    if not hasattr(scipy.special, "btdtri"):
        scipy.special.btdtri = scipy.special.betaincinv
    if not hasattr(np, "in1d"):
        setattr(np, "in1d", np.isin)  # noqa: B010 (a plain assignment trips ruff's NPY201)
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):  # it prints notes about optional modules on import
        warnings.simplefilter("ignore")
        from SMPyBandits.Policies import UCB, Thompson

    def maker(cls: type) -> Callable[[int, int], Player]:
        def make(n_arms: int, seed: int) -> Player:
            # SMPyBandits draws from NumPy's global generator: seeding it is its only knob.
            np.random.seed(seed)  # noqa: NPY002
            policy = cls(n_arms)
            policy.startGame()

            def play(u: list[float], means: list[float]) -> list[int]:
                out = [0] * len(u)
                choice, get_reward = policy.choice, policy.getReward
                # UCB's vectorised index divides by zero pulls before masking them to +inf.
                with np.errstate(divide="ignore", invalid="ignore"):
                    for i, ui in enumerate(u):
                        arm = choice()
                        get_reward(arm, 1.0 if ui < means[arm] else 0.0)
                        out[i] = arm
                return out

            return play

        return make

    version = _version("SMPyBandits")
    note = "shims: scipy.special.btdtri = betaincinv, np.in1d = np.isin"
    return [
        Peer(
            library="smpybandits",
            version=version,
            algorithm="thompson",
            make=maker(Thompson),
            note=note,
        ),
        Peer(library="smpybandits", version=version, algorithm="ucb1", make=maker(UCB), note=note),
    ]


# --- obp --------------------------------------------------------------------------------


def _obp() -> list[Peer]:
    import obp  # its __init__ imports only the version

    if "obp.policy" not in sys.modules:
        # obp/policy/__init__.py imports the logistic and offline learners, which import torch
        # (a multi-GB install). BernoulliTS lives in obp.policy.contextfree, which needs only
        # numpy, scikit-learn and PyYAML: load it under an empty package stub.
        stub = types.ModuleType("obp.policy")
        stub.__path__ = [str(Path(obp.__file__).parent / "policy")]
        stub.__package__ = "obp.policy"
        sys.modules["obp.policy"] = stub
    bernoulli_ts = importlib.import_module("obp.policy.contextfree").BernoulliTS

    def make(n_arms: int, seed: int) -> Player:
        policy = bernoulli_ts(n_actions=n_arms, random_state=seed)

        def play(u: list[float], means: list[float]) -> list[int]:
            out = [0] * len(u)
            select, update = policy.select_action, policy.update_params
            for i, ui in enumerate(u):
                arm = select()[0]
                update(arm, 1.0 if ui < means[arm] else 0.0)
                out[i] = arm
            return out

        return play

    return [
        Peer(
            library="obp",
            version=_version("obp"),
            algorithm="thompson",
            make=make,
            note="BernoulliTS (batch_size=1); installed --no-deps, obp.policy.__init__ bypassed",
        )
    ]


_LOADERS: dict[str, Callable[[], list[Peer]]] = {
    "mabwiser": _mabwiser,
    "river": _river,
    "smpybandits": _smpybandits,
    "obp": _obp,
}


def load_peers() -> tuple[list[Peer], dict[str, str]]:
    """The peers that import, and ``{library: reason}`` for those skipped."""
    peers: list[Peer] = []
    skipped: dict[str, str] = {}
    for name, loader in _LOADERS.items():
        try:
            peers.extend(loader())
        except ModuleNotFoundError as exc:
            hint = " (pip install --no-deps obp)" if name == "obp" else ""
            skipped[name] = f"not importable: {exc}{hint}"
        except Exception as exc:  # any import failure of a peer only skips that peer
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return peers, skipped
