"""``autoexp demo``: the whole loop on one machine in seconds, no Redis.

Three versions of a shop page run as upstreams on 127.0.0.1: ``control`` (30% of visits
buy), ``better`` (45%) and ``harmful`` (answers 503 to half its requests, is slower, and
10% of the visits it does serve buy). The real sidecar (:func:`autoexp.proxy.make_app`)
sits in front of them with an SQLite store; its experiment is read by
:func:`autoexp.config.load_config` from a TOML file the demo writes beside its outputs
(reusable with ``autoexp proxy --config``). Simulated shoppers request ``/shop/...``
through the proxy, sticky by ``X-User-Id``; each buys with the probability of the version
shown, and the shop reports every visit's outcome (1 a purchase, 0 none) to
``POST /_autoexp/rewards`` with the ``X-Autoexp-Decision`` token, in batches, as a real
backend would. A 503 from ``harmful`` is retried on control by the proxy (the shopper still
gets a page) and counts as 0 for ``harmful``.

The guardrail or the test rolls ``harmful`` back, the test promotes ``better``; the demo
serves a few hundred more requests (all to ``better``), prints what happened and why, and
writes ``report.html`` (plots embedded, PNGs beside it) and the decision log (JSON lines).
Everything runs on one asyncio loop in one process. Exit code 0 when both changes
happened; 1 when the run ended without them (``--max-requests``, ``--timeout-s``, or a
state from which the story cannot finish).
"""

from .run import add_demo_command, run_demo
from .story import VERSIONS, DemoResult, Version

__all__ = ["VERSIONS", "DemoResult", "Version", "add_demo_command", "run_demo"]
