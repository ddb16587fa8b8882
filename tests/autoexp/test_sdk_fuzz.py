"""The SDK against generated misuse (hypothesis, derandomized): an ``Experiment`` with one
keyword given any value, then decided and rewarded with any unit, context and reward. Each
step either works or raises one of autoexp's errors (``ConfigError`` for a definition,
``RequestError``, ``RewardError``), never a ``TypeError`` or ``AttributeError`` from deep
inside; and a refused reward records nothing."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autoexp
from autoexp.errors import AutoexpError, ConfigError, RewardError
from tests.autoexp.test_api_fuzz import values

EXAMPLES = 300
SECRET = "k" * 32
KEYWORDS = [
    "policy",
    "policy_params",
    "explore_share",
    "conservative_alpha",
    "conservative_delta",
    "test",
    "test_params",
    "guardrails",
    "reward_range",
    "refresh_every",
    "refresh_s",
    "token_ttl_s",
    "join_window_s",
    "default_reward",
    "context",
    "drift",
    "seed",
]


def n_rewards(exp: autoexp.Experiment) -> int:
    exp.engine.flush()
    return sum(r["type"] == "reward" for r in exp.engine.store.records(exp.name))


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.one_of(st.none(), st.tuples(st.sampled_from(KEYWORDS), values)),
    st.one_of(st.none(), st.text(min_size=1, max_size=8), values),
    st.one_of(st.none(), values),
    st.one_of(st.floats(0, 1), values),
)
def test_sdk_misuse_gets_autoexps_own_errors(
    keyword: Any, unit: Any, context: Any, reward: Any
) -> None:
    options = {} if keyword is None else {keyword[0]: keyword[1]}
    try:
        exp = autoexp.Experiment("x", store="memory://", secret=SECRET, **options)
    except ConfigError:
        return
    except Exception as e:  # no path to the mistake, only a traceback
        raise AssertionError(f"Experiment({options!r:.200}): {type(e).__name__}: {e}") from e
    try:
        exp.setting("a")
        exp.setting("b", depth=2)
        try:
            decision = exp.decide(unit=unit, context=context)
        except AutoexpError:  # ConfigError at the first call, RequestError for a context
            return
        before = n_rewards(exp)
        try:
            exp.reward(decision, reward)
        except RewardError:
            assert n_rewards(exp) == before  # refused: nothing recorded
        else:
            assert n_rewards(exp) == before + 1
    except AssertionError:
        raise
    except Exception as e:
        raise AssertionError(
            f"{options!r:.200}, unit {unit!r:.60}, context {context!r:.60}, reward "
            f"{reward!r:.60}: {type(e).__name__}: {e}"
        ) from e
    finally:
        exp.close()
