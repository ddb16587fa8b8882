"""Vowpal Wabbit's contextual bandit behind the policy protocol: :class:`VWExplore`.

``cb_explore_adf`` with SquareCB or epsilon-greedy exploration. The allocation is the exact
probability of each arm given the model and the context (VW's pmf), and choosing is a draw
from it. Not additive: see :mod:`policies._learner_base`. ``vowpalwabbit`` is imported when
a state is first built, so importing :mod:`policies` stays fast.
"""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ._learner_base import LearnerStats, _count, _finite, _Learner, _positive
from .base import Decision, FloatArray, check_params

__all__ = ["VWExplore"]

_VW_MAGIC = b"autoexp-vw-cb/1\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class VWExplore(_Learner):
    """Vowpal Wabbit's contextual bandit, ``--cb_explore_adf``, with exact propensities.

    Each decision is one multi-line example: a shared line holding the context
    (``shared |s 0:x_0 1:x_1 ...``) and one line per arm holding its id (``|a k``);
    ``-q sa`` crosses them, so each arm has its own linear model of the context (with the
    context's constant, its own intercept). VW's exploration turns its cost estimates
    into a probability mass function over the arms: that pmf (normalised in float64) is
    the allocation, and ``select`` draws from it.

    Rewards in ``[low, high]`` are fed to VW as costs ``(high - r) / (high - low)``, which
    is ``1 - r`` for rewards in [0, 1]. Costs then lie in [0, 1], the range SquareCB's
    ``gamma`` is calibrated for (Foster & Rakhlin 2020 assume losses in [0, 1]), and VW's
    initial estimate 0 is the lowest cost possible: an arm not yet tried looks at least
    as good as any tried one (optimism), where ``-r`` would start every arm at the worst.

    Parameters
    ----------
    dim : int >= 1
        Numbers in each context (include a constant 1 for intercepts).
    explore : {"squarecb", "epsilon"}
        ``--squarecb`` (inverse-gap weighting) or ``--epsilon``.
    gamma_scale : float > 0
        SquareCB: ``gamma = gamma_scale * t^gamma_exponent`` (VW's default 10).
    gamma_exponent : float >= 0
        SquareCB (VW's default 0.5).
    epsilon : float in [0, 1]
        Epsilon-greedy: the share spread uniformly over the arms.
    learning_rate : float > 0
        VW's ``-l`` (its default 0.5).
    bits : int in [1, 30]
        VW's ``-b``: 2^bits weights (four floats each) per replicate.
    low, high : float
        Bounds of valid rewards; rewards outside are refused.

    Notes
    -----
    Regret: O(sqrt(K T log|F|)) for SquareCB with an online regression oracle
      (Foster & Rakhlin 2020, Thm 1); O(T^(2/3) (K log|F|)^(1/3)) for epsilon-greedy
      (Langford & Zhang 2007)

    Not additive: the model learns in order. VW breaks ties between equal estimates in
    favour of the lower arm id; the allocation says so exactly. The state's rows are
    independent workspaces (B replicates); the training itself is deterministic.
    VW 9.11's Python binding has no in-memory serialisation, so ``to_bytes`` and
    ``from_bytes`` pass each model through a private temporary file.

    Examples
    --------
    >>> policy = VWExplore(dim=2)
    >>> state = policy.init(n_arms=3, batch=2)
    >>> policy.allocation(state, np.ones((2, 2))).round(6)  # VW's pmf is float32
    array([[0.333333, 0.333333, 0.333333],
           [0.333333, 0.333333, 0.333333]])
    """

    name: ClassVar[str] = "vw-cb"
    dim: int
    explore: str = "squarecb"
    gamma_scale: float = 10.0
    gamma_exponent: float = 0.5
    epsilon: float = 0.05
    learning_rate: float = 0.5
    bits: int = 18
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        self._check_common()
        check_params(
            self.name,
            explore=(
                self.explore in ("squarecb", "epsilon"),
                self.explore,
                "'squarecb' or 'epsilon'",
            ),
            gamma_scale=(_positive(self.gamma_scale), self.gamma_scale, "finite and > 0"),
            gamma_exponent=(
                _finite(self.gamma_exponent) and self.gamma_exponent >= 0,
                self.gamma_exponent,
                "finite and >= 0",
            ),
            epsilon=(
                _finite(self.epsilon) and 0.0 <= self.epsilon <= 1.0,
                self.epsilon,
                "in [0, 1]",
            ),
            learning_rate=(_positive(self.learning_rate), self.learning_rate, "finite and > 0"),
            bits=(_count(self.bits, 1) and self.bits <= 30, self.bits, "an integer in [1, 30]"),
        )

    def vw_arguments(self) -> list[str]:
        """The command line each replicate's workspace is built with."""
        out = ["--cb_explore_adf", "--quiet", "-q", "sa", "-b", str(self.bits)]
        out += ["-l", repr(float(self.learning_rate))]
        if self.explore == "squarecb":
            out += ["--squarecb", "--gamma_scale", repr(float(self.gamma_scale))]
            out += ["--gamma_exponent", repr(float(self.gamma_exponent))]
        else:
            out += ["--epsilon", repr(float(self.epsilon))]
        return out

    def init(self, n_arms: int, batch: int = 1) -> LearnerStats:
        if not (_count(n_arms, 2) and _count(batch, 1)):
            raise ValueError(
                f"{self.name}: n_arms must be an integer >= 2 and batch >= 1 "
                f"(got {n_arms!r}, {batch!r})"
            )
        import vowpalwabbit

        model = np.empty(batch, dtype=object)
        for b in range(batch):
            model[b] = vowpalwabbit.Workspace(arg_list=self.vw_arguments())
        return LearnerStats(
            model=model, rng=np.full(batch, None, dtype=object), n=np.zeros((batch, n_arms))
        )

    @staticmethod
    def lines(x: Sequence[float], n_arms: int) -> list[str]:
        """The multi-line example of one context ``x`` (dim,): shared line, then the arms.

        >>> VWExplore.lines([1.0, -0.25], 2)
        ['shared |s 0:1 1:-0.25', '|a 0', '|a 1']
        """
        shared = "shared |s " + " ".join(f"{i}:{v:.9g}" for i, v in enumerate(x))
        return [shared, *(f"|a {k}" for k in range(n_arms))]

    def allocation(self, stats: LearnerStats, context: FloatArray | None = None) -> FloatArray:
        """VW's pmf at each row's context, (B, K), rows normalised to sum to 1."""
        batch, k = stats.n.shape
        x = self.context(context, batch).tolist()
        p = np.array([stats.model[b].predict(self.lines(x[b], k)) for b in range(batch)])
        p = np.maximum(p, 0.0)
        return np.asarray(p / p.sum(axis=1, keepdims=True), dtype=np.float64)

    def update(
        self,
        stats: LearnerStats,
        decision: Decision,
        reward: FloatArray,
        context: FloatArray | None = None,
    ) -> LearnerStats:
        """Train each row's workspace on its cost, in place; returns ``stats``.

        Parameters
        ----------
        decision : Decision
            ``arm`` (B,) and the ``propensity`` (B, K) it was drawn with; VW's
            importance weighting reads the played arm's probability.
        reward : (B,) float64
            In ``[low, high]``.
        context : (B, dim) float64
            The context the decision was made at.
        """
        rows = self._observation(stats, decision, reward, context)
        bad = [pb for _, _, _, pb in rows if not 0.0 < pb <= 1.0]
        if bad:
            raise ValueError(
                f"{self.name}: the played arm's propensity must be in (0, 1] (got {bad!r})"
            )
        k = stats.n.shape[1]
        for b, (a, rb, xb, pb) in enumerate(rows):
            lines = self.lines(xb, k)
            lines[1 + a] = f"0:{1.0 - rb:.9g}:{pb:.9g} {lines[1 + a]}"
            stats.model[b].learn(lines)
            stats.n[b, a] += 1.0
        return stats

    def to_bytes(self, stats: LearnerStats) -> bytes:
        """A snapshot of every row's model and counts, for :meth:`from_bytes`."""
        batch, k = stats.n.shape
        out = io.BytesIO()
        args = " ".join(self.vw_arguments()).encode()
        out.write(_VW_MAGIC + struct.pack("<III", batch, k, len(args)) + args)
        out.write(np.ascontiguousarray(stats.n, dtype="<f8").tobytes())
        with tempfile.TemporaryDirectory(prefix="autoexp-vw-") as tmp:
            path = Path(tmp) / "model"
            for b in range(batch):
                stats.model[b].save(str(path))
                blob = path.read_bytes()
                out.write(struct.pack("<Q", len(blob)) + blob)
        return out.getvalue()

    def from_bytes(self, data: bytes) -> LearnerStats:
        """The state saved by :meth:`to_bytes` (of a policy with the same VW arguments).

        Raises
        ------
        ValueError
            If ``data`` is not such a snapshot, or was made with other VW arguments.
        """
        import vowpalwabbit

        view = memoryview(data)
        head = len(_VW_MAGIC) + 12
        if bytes(view[: len(_VW_MAGIC)]) != _VW_MAGIC or len(view) < head:
            raise ValueError(f"{self.name}: not a vw-cb snapshot (bad header)")
        batch, k, n_args = struct.unpack("<III", view[len(_VW_MAGIC) : head])
        args = bytes(view[head : head + n_args]).decode()
        if args != " ".join(self.vw_arguments()):
            raise ValueError(
                f"{self.name}: snapshot made with other VW arguments (got {args!r}); "
                f"accepted: {' '.join(self.vw_arguments())!r}"
            )
        pos = head + n_args
        n = np.frombuffer(view[pos : pos + 8 * batch * k], dtype="<f8").reshape(batch, k).copy()
        pos += 8 * batch * k
        model = np.empty(batch, dtype=object)
        with tempfile.TemporaryDirectory(prefix="autoexp-vw-") as tmp:
            for b in range(batch):
                (size,) = struct.unpack("<Q", view[pos : pos + 8])
                path = Path(tmp) / f"model-{b}"
                path.write_bytes(view[pos + 8 : pos + 8 + size])
                pos += 8 + size
                model[b] = vowpalwabbit.Workspace(arg_list=["--quiet", "-i", str(path)])
        if pos != len(view):
            raise ValueError(f"{self.name}: not a vw-cb snapshot (size mismatch)")
        return LearnerStats(model=model, rng=np.full(batch, None, dtype=object), n=n)

    @classmethod
    def example(cls) -> VWExplore:
        return cls(dim=3, bits=16)
