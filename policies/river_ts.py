"""Bootstrapped Thompson sampling over river classifiers: :class:`RiverThompson`.

One ensemble of river classifiers per arm; the allocation is the exact probability that
Thompson sampling over the ensembles plays each arm (:func:`prob_best_ensemble`), and
choosing is a draw from it. Not additive: see :mod:`policies._learner_base`. ``river`` is
imported when a state is first built, so importing :mod:`policies` stays fast.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from ._learner_base import LearnerStats, _count, _Learner, _positive
from .base import Decision, FloatArray, IntArray, check_params

__all__ = ["RiverThompson", "prob_best_ensemble"]

_RIVER_FORMAT = "autoexp-river-ts/1"


def prob_best_ensemble(values: FloatArray) -> FloatArray:
    """P(arm k is largest) when each arm draws one of its values uniformly, ties shared.

    For arm k at value ``v``, let ``lo_m`` and ``eq_m`` be the shares of arm m's values
    below and equal to ``v``. Arm k wins alone against the arms below and shares a tie
    with each set ``S`` of equal arms with probability ``1 / (|S| + 1)``, so
    ``P(k wins | v) = sum_S prod_{m in S} eq_m prod_{m not in S} lo_m / (|S| + 1)
    = integral_0^1 prod_{m != k} (lo_m + eq_m t) dt``, which is computed exactly from the
    polynomial's coefficients. ``P(k is best)`` averages this over arm k's values.

    Parameters
    ----------
    values : (B, K, n) float64
        ``n`` equally likely values per row and arm.

    Returns
    -------
    (B, K) float64
        Rows sum to 1.

    Examples
    --------
    >>> prob_best_ensemble(np.array([[[0.1, 0.9], [0.5, 0.5]]]))
    array([[0.5, 0.5]])
    >>> prob_best_ensemble(np.array([[[0.3], [0.3], [0.1]]]))
    array([[0.5, 0.5, 0. ]])
    """
    v = np.asarray(values, dtype=np.float64)
    batch, k, n = v.shape
    out = np.empty((batch, k))
    itself = np.eye(k, dtype=bool)[None, :, None, :]  # (1, K, 1, K): arm k against itself
    # Chunks of rows bound the (rows, K, n, K, n) comparison arrays to ~4M elements.
    step = max(1, 4_000_000 // max(1, k * k * n * n))
    for start in range(0, batch, step):
        c = v[start : start + step]
        mine = c[:, :, :, None, None]
        theirs = c[:, None, None, :, :]
        # (rows, K, n, K): the share of arm m's values below / equal to arm k's value j;
        # an arm does not compete with itself (factor 1).
        lo = np.where(itself, 1.0, (theirs < mine).sum(axis=-1) / n)
        eq = np.where(itself, 0.0, (theirs == mine).sum(axis=-1) / n)
        if not eq.any():  # no ties between arms: the polynomial is its constant term
            win = lo.prod(axis=-1)
        else:
            poly = np.zeros((*lo.shape[:3], k))  # coefficients of t^0 .. t^(K-1)
            poly[..., 0] = 1.0
            for m in range(k):
                shifted = np.zeros_like(poly)
                shifted[..., 1:] = poly[..., :-1] * eq[..., m, None]
                poly = poly * lo[..., m, None] + shifted
            win = poly @ (1.0 / np.arange(1, k + 1))
        out[start : start + step] = win.mean(axis=2)
    return out


def _logistic(lr: float) -> Callable[[], Any]:
    def make() -> Any:
        from river import linear_model, optim

        return linear_model.LogisticRegression(optimizer=optim.SGD(lr))

    return make


@dataclass(frozen=True, slots=True, kw_only=True)
class RiverThompson(_Learner):
    """Bootstrapped Thompson sampling over river classifiers, with exact propensities.

    Each arm has ``n_boot`` copies of a river classifier of success given the context
    (``{i: x_i}``). Each reward trains every copy of the played arm with its own random
    weight (Poisson(1), or 0 or 2 with "double-or-nothing"): the copies are bootstrap
    replicates of the arm's data, and their spread stands in for a posterior. Thompson
    sampling takes one copy per arm uniformly at random and plays the arm whose copy
    predicts the highest success probability (ties uniformly). The allocation is the
    exact probability of that, from the ``n_boot`` predictions per arm
    (:func:`prob_best_ensemble`), and ``select`` draws from it; :meth:`sample_arm`
    samples copies as described, with the same law.

    A reward ``r`` scaled to [0, 1] trains a copy with weight ``w`` as two weighted
    examples, ``(x, True)`` with weight ``w r`` and ``(x, False)`` with ``w (1 - r)``
    (one of them for binary rewards): the log-loss gradient of the fractional target
    ``r``, which river's classifiers do not take directly.

    Parameters
    ----------
    dim : int >= 1
        Numbers in each context.
    n_boot : int >= 2
        Copies per arm.
    model : "logistic" or callable
        ``"logistic"``: ``river.linear_model.LogisticRegression`` with ``SGD(lr)``; or a
        factory returning a fresh river classifier with ``learn_one(x, y, w)`` and
        ``predict_proba_one(x)``.
    lr : float > 0
        Learning rate of ``"logistic"`` (river's default is 0.01, slow for bandits).
    bootstrap : {"poisson", "double-or-nothing"}
        The weights' law; both have mean 1 and variance 1.
    seed : int >= 0
        Seeds each row's generator for the bootstrap weights
        (``SeedSequence(seed).spawn(B)``); ``update`` takes no generator.
    low, high : float
        Bounds of valid rewards; rewards outside are refused.

    Notes
    -----
    Regret: no finite-time bound for bootstrapped Thompson sampling with SGD learners;
      Osband & Van Roy 2015 (bootstrapped Thompson sampling), Eckles & Kaptein 2014
      (online bootstrap, double-or-nothing weights)

    Not additive: the models learn in order. Snapshots are pickles: load only snapshots
    your own learner process wrote (unpickling runs code chosen by whoever wrote them).

    Examples
    --------
    >>> policy = RiverThompson(dim=2, n_boot=4)
    >>> policy.allocation(policy.init(n_arms=2), np.ones((1, 2)))
    array([[0.5, 0.5]])
    """

    name: ClassVar[str] = "river-ts"
    dim: int
    n_boot: int = 10
    model: str | Callable[[], Any] = "logistic"
    lr: float = 0.05
    bootstrap: str = "poisson"
    seed: int = 0
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        self._check_common()
        check_params(
            self.name,
            n_boot=(_count(self.n_boot, 2), self.n_boot, "an integer >= 2"),
            model=(
                self.model == "logistic"
                or (callable(self.model) and not isinstance(self.model, str)),
                self.model,
                "'logistic' or a callable returning a river classifier",
            ),
            lr=(_positive(self.lr), self.lr, "finite and > 0"),
            bootstrap=(
                self.bootstrap in ("poisson", "double-or-nothing"),
                self.bootstrap,
                "'poisson' or 'double-or-nothing'",
            ),
            seed=(_count(self.seed, 0), self.seed, "an integer >= 0"),
        )

    def init(self, n_arms: int, batch: int = 1) -> LearnerStats:
        if not (_count(n_arms, 2) and _count(batch, 1)):
            raise ValueError(
                f"{self.name}: n_arms must be an integer >= 2 and batch >= 1 "
                f"(got {n_arms!r}, {batch!r})"
            )
        make = _logistic(self.lr) if isinstance(self.model, str) else self.model
        model = np.empty((batch, n_arms, self.n_boot), dtype=object)
        for index in np.ndindex(model.shape):
            model[index] = make()
        rng = np.empty(batch, dtype=object)
        for b, child in enumerate(np.random.SeedSequence(self.seed).spawn(batch)):
            rng[b] = np.random.default_rng(child)
        return LearnerStats(model=model, rng=rng, n=np.zeros((batch, n_arms)))

    def predictions(self, stats: LearnerStats, context: npt.ArrayLike | None) -> FloatArray:
        """Every copy's predicted success probability at each row's context, (B, K, n_boot)."""
        x = self.context(context, stats.n.shape[0])
        out = []
        for b, xb in enumerate(x.tolist()):
            features = dict(enumerate(xb))
            out.append(
                [
                    [copy.predict_proba_one(features).get(True, 0.0) for copy in copies]
                    for copies in stats.model[b].tolist()
                ]
            )
        return np.array(out, dtype=np.float64).reshape(stats.model.shape)

    def allocation(self, stats: LearnerStats, context: FloatArray | None = None) -> FloatArray:
        """P(each arm's uniformly drawn copy predicts the most), (B, K); exact."""
        return prob_best_ensemble(self.predictions(stats, context))

    def sample_arm(
        self, stats: LearnerStats, rng: np.random.Generator, context: FloatArray | None = None
    ) -> IntArray:
        """One copy per arm uniformly, then the argmax (ties uniformly): law of ``select``."""
        values = self.predictions(stats, context)
        batch, k, n = values.shape
        pick = rng.integers(n, size=(batch, k))
        chosen = np.take_along_axis(values, pick[:, :, None], axis=2)[:, :, 0]
        top = chosen == chosen.max(axis=1, keepdims=True)
        return np.asarray(np.argmax(top * rng.random((batch, k)), axis=1), dtype=np.int64)

    def update(
        self,
        stats: LearnerStats,
        decision: Decision,
        reward: FloatArray,
        context: FloatArray | None = None,
    ) -> LearnerStats:
        """Train the played arm's copies with bootstrap weights, in place; returns ``stats``.

        Parameters
        ----------
        decision : Decision
            ``arm`` (B,) played; ``propensity`` (B, K).
        reward : (B,) float64
            In ``[low, high]``.
        context : (B, dim) float64
            The context the decision was made at.
        """
        for b, (a, success, xb, _) in enumerate(
            self._observation(stats, decision, reward, context)
        ):
            g = stats.rng[b]
            if self.bootstrap == "poisson":
                weights = g.poisson(1.0, self.n_boot).tolist()
            else:
                weights = (2 * g.integers(0, 2, self.n_boot)).tolist()
            features = dict(enumerate(xb))
            copies = stats.model[b, a]
            for j, w in enumerate(weights):
                if w == 0:
                    continue
                if success > 0.0:
                    copies[j].learn_one(features, True, w=float(w) * success)
                if success < 1.0:
                    copies[j].learn_one(features, False, w=float(w) * (1.0 - success))
            stats.n[b, a] += 1.0
        return stats

    def to_bytes(self, stats: LearnerStats) -> bytes:
        """A pickled snapshot of the models, generators and counts (see the trust note)."""
        payload = {
            "format": _RIVER_FORMAT,
            "n_boot": self.n_boot,
            "model": stats.model,
            "rng": stats.rng,
            "n": stats.n,
        }
        return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)

    def from_bytes(self, data: bytes) -> LearnerStats:
        """The state saved by :meth:`to_bytes`. Unpickles: load only your own snapshots.

        Raises
        ------
        ValueError
            If ``data`` is not such a snapshot or its ``n_boot`` differs.
        """
        try:
            payload = pickle.loads(data)  # trusted snapshots only, see the docstring
        except Exception as exc:  # any unpickling failure means: not a snapshot
            raise ValueError(f"{self.name}: not a river-ts snapshot ({exc})") from None
        if not isinstance(payload, dict) or payload.get("format") != _RIVER_FORMAT:
            raise ValueError(f"{self.name}: not a river-ts snapshot (bad format)")
        if payload["n_boot"] != self.n_boot:
            raise ValueError(
                f"{self.name}: snapshot has n_boot {payload['n_boot']!r}; accepted: {self.n_boot}"
            )
        return LearnerStats(model=payload["model"], rng=payload["rng"], n=payload["n"])

    @classmethod
    def example(cls) -> RiverThompson:
        return cls(dim=3, n_boot=4)
