"""Decision tokens: a decision's facts, signed, so a reward can be trusted later.

A token is ``base64url(payload) "." base64url(HMAC-SHA256(key, payload))`` where the
payload is ``"1|id|arm|issued|expires|p_0,p_1,...|experiment"`` (format 1; floats written
with ``repr``, so they read back exactly): decision id, arm, issue time, expiry, the
allocation the arm was drawn from (its propensities: the one for the arm and the rest,
which off-policy tests need) and the experiment (last, so its name may hold ``|``). A
decision of a contextual policy also carries its context, whose numbers the reward's
update needs: ``"2|id|arm|issued|expires|p_0,...|x_0,x_1,...|experiment"`` (format 2), so
any replica can apply the reward without looking the decision up. A
fixed text layout rather than JSON because a token is made and checked on every decision
and reward. Anyone holding the token can send a reward for it; nobody without the key can
make one up, change the arm or the propensity, or revive an expired one.

The key comes from config or ``AUTOEXP_SECRET`` (at least 16 bytes); rotate it by listing
the old key after the new one (tokens signed with any listed key verify).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, RewardError

__all__ = ["Ticket", "keys_from", "sign", "verify"]

MIN_KEY_BYTES = 16


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a token proves about a decision."""

    id: str
    experiment: str
    arm: int
    propensity: tuple[float, ...]
    issued: float
    expires: float
    context: tuple[float, ...] | None = None

    @property
    def played(self) -> float:
        """The probability the arm was played with."""
        return self.propensity[self.arm]


def keys_from(secret: str | bytes | Sequence[str | bytes] | None) -> tuple[bytes, ...]:
    """Signing keys from config (one, or several for rotation: the first signs) or from
    ``AUTOEXP_SECRET`` (comma-separated for rotation)."""
    if secret is None:
        env = os.environ.get("AUTOEXP_SECRET")
        if not env:
            raise ConfigError(
                "secret: no signing key; set AUTOEXP_SECRET or the config's secret "
                f"(at least {MIN_KEY_BYTES} bytes)"
            )
        secret = env.split(",")
    items = [secret] if isinstance(secret, str | bytes) else list(secret)
    keys = tuple(k.encode() if isinstance(k, str) else bytes(k) for k in items)
    if not keys or any(len(k) < MIN_KEY_BYTES for k in keys):
        raise ConfigError(f"secret: every key must be at least {MIN_KEY_BYTES} bytes")
    return keys


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    """base64url without padding (``base64.urlsafe_b64encode``'s, in fewer calls)."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_TO_URLSAFE).decode()


@functools.lru_cache(maxsize=1024)
def _propensities(values: tuple[float, ...]) -> str | None:
    """``p_0,p_1,...`` as a token writes them, ``None`` if one is not finite; a replica
    serves few distinct allocations between refreshes (cached)."""
    if not all(math.isfinite(p) for p in values):
        return None
    return ",".join(map(repr, values))


def _unb64(text: str) -> bytes:
    """base64url without padding; anything else (``+``, ``/``, junk) is a ValueError."""
    if "+" in text or "/" in text:
        raise ValueError("not base64url")
    data = (text + "=" * (-len(text) % 4)).encode().translate(_FROM_URLSAFE)
    return binascii.a2b_base64(data, strict_mode=True)


@functools.lru_cache(maxsize=64)
def _mac(key: bytes) -> Any:
    """A keyed HMAC-SHA256 to copy from (the key schedule is computed once)."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _digest(key: bytes, payload: bytes) -> bytes:
    h = _mac(key).copy()
    h.update(payload)
    return bytes(h.digest())


def sign(keys: Sequence[bytes], ticket: Ticket, *, issued: str | None = None) -> str:
    """The token of ``ticket``, signed with the first key; ``issued``: ``repr`` of
    ``ticket.issued`` if the caller has it already (the engine writes it in the
    decision's record too: one float's digits cost more than the rest of the head)."""
    propensities = _propensities(ticket.propensity)
    if "|" in ticket.id or propensities is None:
        raise ValueError(f"ticket: id without '|' and finite propensities (got {ticket!r})")
    if issued is None:
        issued = repr(ticket.issued)
    head = f"|{ticket.id}|{ticket.arm:d}|{issued}|{ticket.expires!r}|{propensities}|"
    if ticket.context is None:
        payload = f"1{head}{ticket.experiment}".encode()
    else:
        if not all(math.isfinite(x) for x in ticket.context):
            raise ValueError(f"ticket: context must be finite numbers (got {ticket.context!r})")
        payload = f"2{head}{','.join(map(repr, ticket.context))}|{ticket.experiment}".encode()
    return f"{_b64(payload)}.{_b64(_digest(keys[0], payload))}"


def verify(keys: Sequence[bytes], token: object, *, now: float) -> Ticket:
    """The ticket of a genuine, unexpired token; :class:`RewardError` otherwise."""
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 65_536:
        raise RewardError(f"token: malformed (got {str(token)[:40]!r})")
    body, _, tag = token.partition(".")
    try:
        payload, mac = _unb64(body), _unb64(tag)
    except (binascii.Error, ValueError):
        raise RewardError("token: malformed (not base64url)") from None
    if not any(hmac.compare_digest(_digest(k, payload), mac) for k in keys):
        raise RewardError("token: forged or signed with another key (signature mismatch)")
    try:
        text = payload.decode()
        context = None
        if text.startswith("2|"):
            version, id_, arm, issued, expires, propensity, xs, experiment = text.split("|", 7)
            context = tuple(map(float, xs.split(","))) if xs else ()
        else:
            version, id_, arm, issued, expires, propensity, experiment = text.split("|", 6)
            if version != "1":
                raise ValueError(version)
        ticket = Ticket(
            id_,
            experiment,
            int(arm),
            tuple(map(float, propensity.split(","))),
            float(issued),
            float(expires),
            context,
        )
    except (ValueError, UnicodeDecodeError):
        raise RewardError("token: malformed payload") from None
    if not (0 <= ticket.arm < len(ticket.propensity) and math.isfinite(ticket.expires)):
        raise RewardError("token: malformed payload")
    if now > ticket.expires:
        raise RewardError(
            f"token: expired {now - ticket.expires:.0f} s ago (decision {ticket.id}, "
            f"experiment {ticket.experiment!r})"
        )
    return ticket
