"""The status page at ``GET /_autoexp/ui``: per experiment, the allocation over time, each
alternative's state, share and confidence interval against control, the conservative budget,
the pause, and the evidence of the last change. Read-only and without a token, like the
metrics.

``GET /_autoexp/ui``
    the page, rendered here (it works without JavaScript) and self-contained (inline CSS
    and script; nothing is fetched from elsewhere). Its script re-renders it from the data
    every :data:`REFRESH_S` seconds with the same markup (:func:`render` has a JavaScript
    twin in :data:`_SCRIPT`: change both together; the tests compare them in Chromium).
``GET /_autoexp/ui/data``
    the same data as JSON: ``{"time", "refresh_s", "experiments": [...], "waiting":
    [...]}`` (``waiting``: the experiments not started because their store has not
    answered since the proxy started, each with its ``reason``); per experiment
    its :meth:`~autoexp.engine.Engine.status` without the raw ``state``, ``evidence``,
    ``changes`` (``null`` while the store fails) and ``history``; the control's
    ``status`` reads ``control``, or ``replaced`` once an alternative is promoted (the
    lifecycle's own word for it, as in the metrics, is ``exploring``: never changed, and
    at 0% after a promotion the page would show it "exploring")
    (:meth:`~autoexp.engine.Engine.history`: every worker's and replica's allocations
    since the experiment began, restarts included, kept in the store; evenly thinned to
    at most :data:`MAX_POINTS`). Non-finite numbers are ``null``.

Experiment and alternative names come from the configuration and are escaped everywhere.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import time
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from aiohttp import web

from ..engine import Engine
from ..errors import StoreError

__all__ = ["MAX_POINTS", "REFRESH_S", "add_ui_routes", "collect", "render"]

REFRESH_S = 5  # the page's script fetches the data this often
MAX_POINTS = 300  # allocation history points drawn per experiment
# series colors (control first) and state colors; the screenshot test looks for them
SERIES = ("#4e79a7", "#f28e2b", "#76b7b2", "#b07aa1", "#edc948", "#9c755f", "#ff9da7", "#bab0ac")
BADGES = {
    "control": "#475569",
    "replaced": "#78716c",
    "exploring": "#2563eb",
    "promoted": "#15803d",
    "rolled_back": "#b91c1c",
    "inconclusive": "#a16207",
    "paused": "#6d28d9",
    "reopened": "#0e7490",
}
OTHER = "#6b7280"
BARS = {"better": "#16a34a", "worse": "#dc2626", "open": "#9ca3af"}
WIDTH, LEFT, TOP, HEIGHT, BAR = 1100, 40, 6, 120, 120  # chart and interval bar, in px
PLOT = WIDTH - LEFT - 10
_SVG = (  # the chart's frame: its size and the share axis
    f'<svg class="chart" width="{WIDTH}" height="{TOP + HEIGHT + 18}">'
    + "".join(
        f'<text x="{LEFT - 4}" y="{TOP + y + 4}" text-anchor="end">{label}</text>'
        for y, label in ((0, "100%"), (HEIGHT // 2, "50%"), (HEIGHT - 4, "0%"))
    )
)


def _clean(x: Any) -> Any:
    """``x`` with non-finite floats as ``None`` (JSON has no infinity)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _thin(rows: Sequence[Any], n: int = MAX_POINTS) -> list[Any]:
    """At most ``n`` of ``rows``, evenly spaced, the first and the last included."""
    if len(rows) <= n:
        return list(rows)
    step = (len(rows) - 1) / (n - 1)
    return [rows[round(i * step)] for i in range(n)]


def collect(engine: Engine) -> dict[str, Any]:
    """The page's data (see the module docstring); reads the store: call it in a thread."""
    waiting = [{"experiment": k, "reason": v} for k, v in engine.not_started().items()]
    out = []
    for name in engine.experiments:
        st = engine.status(name)
        st.pop("state", None)
        st["status"][0] = "replaced" if "promoted" in st["status"][1:] else "control"
        try:
            changes: list[dict[str, Any]] | None = engine.changes(name)
        except StoreError as e:
            changes, st["store_ok"], st["store_error"] = None, False, str(e)
        evidence, history = engine.evidence(name), _thin(engine.history(name))
        out.append(
            {
                **st,
                "param_text": [_param_text(p) for p in st["params"]],
                "evidence": evidence,
                "changes": changes,
                "history": history,
            }
        )
    data = {"time": time.time(), "refresh_s": REFRESH_S, "experiments": out, "waiting": waiting}
    return dict(_clean(data))


# --- rendering (mirrored line by line in _SCRIPT) ---------------------------------------


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fixed(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, rounded as JavaScript's ``toFixed`` (half away from 0)."""
    q = Decimal(x + 0.0).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{q:f}"


def _short(x: float) -> str:
    return _fixed(x, 4).rstrip("0").rstrip(".")


def _signed(x: float | None, none: str) -> str:
    return none if x is None else ("+" if x >= 0 else "") + _fixed(x, 3)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(math.floor(t)))


EPOCH_CHANGES = ("champion", "exhausted", "reopened")  # changes that begin a new epoch


def _param_text(params: Mapping[str, Any]) -> str:
    """An alternative's parameters as one line (``timeout_ms=800, ranker="bm25"``)."""
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items()))


def _params(text: str) -> str:
    """An alternative's parameters, small, under its name."""
    return f'<div class="reason">{_esc(text)}</div>' if text else ""


def _badge(state: str) -> str:
    return f'<span class="badge" style="background:{BADGES.get(state, OTHER)}">{_esc(state)}</span>'


def _chart(e: Mapping[str, Any]) -> str:
    h, k = e["history"], len(e["alternatives"])
    if not h:
        return '<p class="empty">no allocation yet</p>'
    t0, t1 = h[0]["time"], h[-1]["time"]
    span = t1 - t0
    if span > 0:
        pts = [(LEFT + PLOT * (r["time"] - t0) / span, r["allocation"]) for r in h]
    else:
        pts = [(LEFT, h[-1]["allocation"]), (LEFT + PLOT, h[-1]["allocation"])]
    # an allocation holds until the next refresh: steps
    pts = [q for i in range(len(pts) - 1) for q in (pts[i], (pts[i + 1][0], pts[i][1]))] + [pts[-1]]

    def xy(x: float, y: float) -> str:
        return _fixed(x, 1) + "," + _fixed(TOP + HEIGHT * (1 - y), 1)

    out = _SVG
    low = [0.0 for _ in pts]
    for j in range(k):
        high = [low[i] + p[1][j] for i, p in enumerate(pts)]
        line = [xy(p[0], high[i]) for i, p in enumerate(pts)]
        line += reversed([xy(p[0], low[i]) for i, p in enumerate(pts)])
        out += f'<polygon fill="{SERIES[j % len(SERIES)]}" points="{" ".join(line)}"/>'
        low = high
    for c in e["changes"] or []:
        if span > 0 and t0 <= c["time"] <= t1:
            x = _fixed(LEFT + PLOT * (c["time"] - t0) / span, 1)
            color = BADGES.get(c.get("new") or "paused", OTHER)
            out += (
                f'<line x1="{x}" x2="{x}" y1="{TOP}" y2="{TOP + HEIGHT}" stroke="{color}" '
                'stroke-dasharray="4 3"/>'
            )
    y = TOP + HEIGHT + 14
    return (
        out
        + f'<text x="{LEFT}" y="{y}">{_when(t0)}</text>'
        + f'<text x="{LEFT + PLOT}" y="{y}" text-anchor="end">{_when(t1)}</text></svg>'
    )


def _bar(lo: float | None, est: float | None, hi: float | None, scale: float) -> str:
    def x(v: float | None, edge: float) -> str:
        return _fixed(edge if v is None else BAR / 2 + (BAR / 2 - 4) * v / scale, 1)

    better, worse = lo is not None and lo > 0, hi is not None and hi < 0
    kind = "better" if better else "worse" if worse else "open"
    out = f'<svg class="bar" width="{BAR}" height="14">'
    out += f'<line x1="{x(lo, 0)}" x2="{x(hi, BAR)}" y1="7" y2="7" stroke="{BARS[kind]}" '
    out += 'stroke-width="6"/>'
    out += f'<line x1="{BAR // 2}" x2="{BAR // 2}" y1="0" y2="14" stroke="#111827"/>'
    if est is not None:
        out += f'<line x1="{x(est, 0)}" x2="{x(est, 0)}" y1="2" y2="12" stroke="#111827" '
        out += 'stroke-width="2"/>'
    return out + "</svg>"


def _scale(ev: Mapping[str, Any]) -> float:
    vals = [abs(v) for key in ("lower", "estimate", "upper") for v in ev[key][1:] if v is not None]
    return max(vals, default=0.0) or 1.0


def _interval(ev: Mapping[str, Any], i: int, scale: float) -> str:
    lo, est, hi, n = ev["lower"][i], ev["estimate"][i], ev["upper"][i], ev["n"][i]
    bounds = f"[{_signed(lo, '-∞')}, {_signed(hi, '+∞')}]"
    text = f"{_signed(est, '?')} {bounds} n {_fixed(n or 0, 0)}"
    return f'<td>{_bar(lo, est, hi, scale)}<div class="num">{text}</div></td>'


def _change(c: Mapping[str, Any]) -> str:
    who = c.get("by") or "rule " + (c.get("source") or "")
    out = f"{_badge(c.get('new') or c.get('action') or '')} by {_esc(who)}, {_when(c['time'])}"
    if c.get("reason"):
        out += f'<div class="reason">{_esc(c["reason"])}</div>'
    if c.get("lower") is not None or c.get("upper") is not None:
        lo, hi = _signed(c.get("lower"), "-∞"), _signed(c.get("upper"), "+∞")
        n_arm, n_control = _fixed(c.get("n_arm") or 0, 0), _fixed(c.get("n_control") or 0, 0)
        out += f'<div class="reason">bounds [{lo}, {hi}], n {n_arm} vs {n_control} on control</div>'
    return out


def _card(e: Mapping[str, Any]) -> str:
    alts, changes, budget = e["alternatives"], e["changes"] or [], e["budget"]
    meta = [_badge("paused") if e["paused"] else '<span class="muted">running</span>']
    if budget is None:
        meta.append("no conservative budget")
    else:
        left = "?" if budget["remaining"] is None else _fixed(budget["remaining"], 2)
        meta.append(
            f"budget left {left} (alpha {_short(budget['alpha'])}, delta {_short(budget['delta'])})"
        )
    meta.append(f"allocation version {_esc(e['version'])}")
    if e["epoch"]:
        meta.append(f"epoch {_esc(e['epoch'])} (reopened by drift)")
    if e["drift"] is not None:
        d = e["drift"]
        meta.append(
            f"drift watch on {_esc(d['alternative'])}: {_esc(d['detector'])} "
            f"{_fixed(d['statistic'], 1)} of {_short(d['threshold'])}"
        )
    if not e["store_ok"]:
        meta.append(f'<span class="err">store failing: {_esc(e["store_error"])}</span>')
    out = f'<section class="card"><div class="head"><h2>{_esc(e["experiment"])}</h2> '
    out += " · ".join(meta) + "</div>"
    pauses = [c for c in changes if not c.get("new")]
    if pauses:
        out += f'<div class="pause">{_change(pauses[-1])}</div>'
    epochs = [c for c in changes if c.get("new") in EPOCH_CHANGES]
    if epochs:
        out += f'<div class="pause">{_change(epochs[-1])}</div>'
    out += _chart(e) + "<table><tr><th>alternative</th><th>state</th><th>share</th>"
    labels = list(e["evidence"])
    out += "".join(f"<th>{_esc(label)}: difference vs control</th>" for label in labels)
    out += "<th>last change</th></tr>"
    scales = [_scale(e["evidence"][label]) for label in labels]
    for i, name in enumerate(alts):
        out += f'<tr><td><span class="sw" style="background:{SERIES[i % len(SERIES)]}"></span>'
        out += f"{_esc(name)}{_params(e['param_text'][i])}</td>"
        out += f"<td>{_badge(e['status'][i])}</td>"
        out += f"<td>{_fixed(100 * e['allocation'][i], 1)}%</td>"
        for j, label in enumerate(labels):
            ev = e["evidence"][label]
            out += '<td class="muted">control</td>' if i == 0 else _interval(ev, i, scales[j])
        last = [c for c in changes if c.get("new") and c.get("alternative") == name]
        out += f"<td>{_change(last[-1]) if last else ''}</td></tr>"
    return out + "</table></section>"


def _waiting(w: Mapping[str, Any]) -> str:
    out = f'<section class="card"><div class="head"><h2>{_esc(w["experiment"])}</h2> '
    out += f'<span class="err">not started yet, {_esc(w["reason"])}; '
    return out + "its requests go to control</span></div></section>"


def _cards(data: Mapping[str, Any]) -> str:
    out = "".join(_waiting(w) for w in data["waiting"])
    out += "".join(_card(e) for e in data["experiments"])
    return out or '<p class="empty">no experiments</p>'


_STYLE = """
body{font:13px/1.4 "DejaVu Sans",Arial,sans-serif;margin:12px 16px;color:#111827;
background:#f3f4f6}header{display:flex;gap:14px;align-items:baseline}h1{font-size:18px;
margin:0}.muted,#asof,#note,.reason{color:#6b7280}.card{background:#fff;border:1px solid
#e5e7eb;border-radius:6px;padding:8px 12px;margin:10px 0}h2{font-size:15px;display:inline;
margin:0 8px 0 0}.head,.pause{margin-bottom:4px}.badge{display:inline-block;color:#fff;
border-radius:3px;padding:0 6px;font-size:12px}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 6px;border-top:1px solid #e5e7eb;vertical-align:top}
th{font-size:12px;color:#374151}.sw{display:inline-block;width:10px;height:10px;
margin-right:6px}.reason{font-size:12px}.err{color:#991b1b}svg text{font-size:11px;
fill:#6b7280}.num{font-size:12px;font-family:"DejaVu Sans Mono",monospace;white-space:nowrap}
"""

_SCRIPT = r"""
"use strict";
const C = __CONSTANTS__;
const ESC = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"};
const esc = (x) => String(x).replace(/[&<>"']/g, (c) => ESC[c]);
const fixed = (x, d) => Number(x).toFixed(d);
const short = (x) => fixed(x, 4).replace(/\.?0+$/, "");
const signed = (x, none) => (x == null ? none : (x >= 0 ? "+" : "") + fixed(x, 3));
const when = (t) =>
  new Date(Math.floor(t) * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC";
const color = (s) => (Object.hasOwn(C.badges, s) ? C.badges[s] : C.other);
const badge = (s) => `<span class="badge" style="background:${color(s)}">${esc(s)}</span>`;
const series = (j) => C.series[j % C.series.length];
const params = (text) => (text ? `<div class="reason">${esc(text)}</div>` : "");

function chart(e) {
  const h = e.history, k = e.alternatives.length;
  if (!h.length) return '<p class="empty">no allocation yet</p>';
  const t0 = h[0].time, t1 = h[h.length - 1].time, span = t1 - t0, last = h[h.length - 1];
  let pts = span > 0 ? h.map((r) => [C.left + C.plot * (r.time - t0) / span, r.allocation])
    : [[C.left, last.allocation], [C.left + C.plot, last.allocation]];
  pts = pts.slice(0, -1).flatMap((p, i) => [p, [pts[i + 1][0], p[1]]]).concat([pts.at(-1)]);
  const xy = (x, y) => fixed(x, 1) + "," + fixed(C.top + C.height * (1 - y), 1);
  let out = C.svg, low = pts.map(() => 0.0);
  for (let j = 0; j < k; j++) {
    const high = pts.map((p, i) => low[i] + p[1][j]);
    const line = pts.map((p, i) => xy(p[0], high[i]))
      .concat(pts.map((p, i) => xy(p[0], low[i])).reverse());
    out += `<polygon fill="${series(j)}" points="${line.join(" ")}"/>`;
    low = high;
  }
  for (const c of e.changes || []) {
    if (span > 0 && t0 <= c.time && c.time <= t1) {
      const x = fixed(C.left + C.plot * (c.time - t0) / span, 1);
      out += `<line x1="${x}" x2="${x}" y1="${C.top}" y2="${C.top + C.height}" ` +
        `stroke="${color(c.new || "paused")}" stroke-dasharray="4 3"/>`;
    }
  }
  const y = C.top + C.height + 14;
  return out + `<text x="${C.left}" y="${y}">${when(t0)}</text>` +
    `<text x="${C.left + C.plot}" y="${y}" text-anchor="end">${when(t1)}</text></svg>`;
}

function bar(lo, est, hi, scale) {
  const x = (v, edge) => fixed(v == null ? edge : C.bar / 2 + (C.bar / 2 - 4) * v / scale, 1);
  const better = lo != null && lo > 0, worse = hi != null && hi < 0;
  const kind = better ? "better" : worse ? "worse" : "open";
  let out = `<svg class="bar" width="${C.bar}" height="14">`;
  out += `<line x1="${x(lo, 0)}" x2="${x(hi, C.bar)}" y1="7" y2="7" stroke="${C.bars[kind]}" `;
  out += 'stroke-width="6"/>';
  out += `<line x1="${C.bar / 2}" x2="${C.bar / 2}" y1="0" y2="14" stroke="#111827"/>`;
  if (est != null) {
    out += `<line x1="${x(est, 0)}" x2="${x(est, 0)}" y1="2" y2="12" stroke="#111827" `;
    out += 'stroke-width="2"/>';
  }
  return out + "</svg>";
}

function scaleOf(ev) {
  const vals = ["lower", "estimate", "upper"]
    .flatMap((key) => ev[key].slice(1).filter((v) => v != null).map(Math.abs));
  return Math.max(0, ...vals) || 1;
}

function interval(ev, i, scale) {
  const lo = ev.lower[i], est = ev.estimate[i], hi = ev.upper[i], n = ev.n[i];
  const bounds = `[${signed(lo, "-∞")}, ${signed(hi, "+∞")}]`;
  const text = `${signed(est, "?")} ${bounds} n ${fixed(n || 0, 0)}`;
  return `<td>${bar(lo, est, hi, scale)}<div class="num">${text}</div></td>`;
}

function change(c) {
  const who = c.by || "rule " + (c.source || "");
  let out = `${badge(c.new || c.action || "")} by ${esc(who)}, ${when(c.time)}`;
  if (c.reason) out += `<div class="reason">${esc(c.reason)}</div>`;
  if (c.lower != null || c.upper != null) {
    const lo = signed(c.lower, "-∞"), hi = signed(c.upper, "+∞");
    const nArm = fixed(c.n_arm || 0, 0), nControl = fixed(c.n_control || 0, 0);
    out += `<div class="reason">bounds [${lo}, ${hi}], n ${nArm} vs ${nControl} on control</div>`;
  }
  return out;
}

function card(e) {
  const alts = e.alternatives, changes = e.changes || [], budget = e.budget;
  const meta = [e.paused ? badge("paused") : '<span class="muted">running</span>'];
  if (budget == null) {
    meta.push("no conservative budget");
  } else {
    const left = budget.remaining == null ? "?" : fixed(budget.remaining, 2);
    meta.push(`budget left ${left} (alpha ${short(budget.alpha)}, delta ${short(budget.delta)})`);
  }
  meta.push(`allocation version ${esc(e.version)}`);
  if (e.epoch) meta.push(`epoch ${esc(e.epoch)} (reopened by drift)`);
  if (e.drift != null) {
    const d = e.drift;
    meta.push(
      `drift watch on ${esc(d.alternative)}: ${esc(d.detector)} ` +
        `${fixed(d.statistic, 1)} of ${short(d.threshold)}`,
    );
  }
  if (!e.store_ok) meta.push(`<span class="err">store failing: ${esc(e.store_error)}</span>`);
  let out = `<section class="card"><div class="head"><h2>${esc(e.experiment)}</h2> `;
  out += meta.join(" · ") + "</div>";
  const pauses = changes.filter((c) => !c.new);
  if (pauses.length) out += `<div class="pause">${change(pauses[pauses.length - 1])}</div>`;
  const epochs = changes.filter((c) => C.epoch_changes.includes(c.new));
  if (epochs.length) out += `<div class="pause">${change(epochs[epochs.length - 1])}</div>`;
  out += chart(e) + "<table><tr><th>alternative</th><th>state</th><th>share</th>";
  const labels = Object.keys(e.evidence);
  out += labels.map((label) => `<th>${esc(label)}: difference vs control</th>`).join("");
  out += "<th>last change</th></tr>";
  const scales = labels.map((label) => scaleOf(e.evidence[label]));
  alts.forEach((name, i) => {
    out += `<tr><td><span class="sw" style="background:${series(i)}"></span>`;
    out += `${esc(name)}${params(e.param_text[i])}</td>`;
    out += `<td>${badge(e.status[i])}</td>`;
    out += `<td>${fixed(100 * e.allocation[i], 1)}%</td>`;
    labels.forEach((label, j) => {
      const ev = e.evidence[label];
      out += i === 0 ? '<td class="muted">control</td>' : interval(ev, i, scales[j]);
    });
    const last = changes.filter((c) => c.new && c.alternative === name);
    out += `<td>${last.length ? change(last[last.length - 1]) : ""}</td></tr>`;
  });
  return out + "</table></section>";
}

function waiting(w) {
  let out = `<section class="card"><div class="head"><h2>${esc(w.experiment)}</h2> `;
  out += `<span class="err">not started yet, ${esc(w.reason)}; `;
  return out + "its requests go to control</span></div></section>";
}

function cards(d) {
  let out = d.waiting.map(waiting).join("");
  out += d.experiments.map(card).join("");
  return out || '<p class="empty">no experiments</p>';
}

let refreshes = 0;
async function refresh() {
  const note = document.getElementById("note");
  try {
    const r = await fetch("ui/data", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const d = await r.json();
    document.getElementById("experiments").innerHTML = cards(d);
    document.getElementById("asof").textContent = "as of " + when(d.time);
    note.textContent = "";
    document.body.dataset.refreshes = String(++refreshes);
  } catch (err) {
    note.textContent = `refresh failed (${err.message}); showing older data`;
  }
}
setInterval(refresh, C.refresh_s * 1000);
"""

_CONSTANTS = {
    "series": SERIES,
    "badges": BADGES,
    "epoch_changes": EPOCH_CHANGES,
    "other": OTHER,
    "bars": BARS,
    "left": LEFT,
    "top": TOP,
    "height": HEIGHT,
    "plot": PLOT,
    "bar": BAR,
    "svg": _SVG,
    "refresh_s": REFRESH_S,
}


def render(data: Mapping[str, Any]) -> str:
    """The page for ``data`` (from :func:`collect`)."""
    script = _SCRIPT.replace("__CONSTANTS__", json.dumps(_CONSTANTS).replace("</", "<\\/"))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>autoexp status</title><style>{_STYLE}</style></head><body>"
        f'<header><h1>autoexp</h1><span id="asof">as of {_when(data["time"])}</span>'
        f'<span id="note"></span></header><main id="experiments">{_cards(data)}</main>'
        f"<script>{script}</script></body></html>"
    )


def add_ui_routes(app: web.Application, engine: Engine) -> None:
    """Mount the status page and its data on ``app`` (read-only, no token)."""
    headers = {"Cache-Control": "no-store"}

    async def page(request: web.Request) -> web.Response:
        data = await asyncio.to_thread(collect, engine)
        return web.Response(text=render(data), content_type="text/html", headers=headers)

    async def data(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(collect, engine), headers=headers)

    app.router.add_get("/_autoexp/ui", page)
    app.router.add_get("/_autoexp/ui/data", data)
