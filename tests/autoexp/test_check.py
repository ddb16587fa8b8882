"""``autoexp proxy --config FILE --check``: the config checked as serving would load it,
routes that take each other's requests, the store and the upstreams, nothing served."""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

from autoexp.cli import main
from autoexp.config import parse_config
from autoexp.engine import Engine
from autoexp.errors import ConfigError
from autoexp.proxy.check import overlaps
from autoexp.proxy.routes import Route
from autoexp.store import open_store, redacted
from tests.autoexp.conftest import free_port
from tests.autoexp.test_engine import SECRET, spec

EXPERIMENT = """
[experiments.{name}]
alternatives = ["a", {{ name = "b"{upstream} }}]
policy = {{ name = "thompson-beta" }}
safety = {{ explore_share = 0.2, conservative_alpha = 0.05 }}
test = {{ name = "off-policy-cs", n_expected = 1000 }}
route = {{ {route} }}
"""


def config(store: str, upstream: str, *experiments: tuple[str, str, str]) -> str:
    """A config on ``store`` forwarding to ``upstream``; each experiment ``(name, route,
    its alternative's upstream or '')``."""
    text = f'store = "{store}"\n\n[proxy]\nupstream = "{upstream}"\n'
    for name, route, up in experiments:
        alt = f', upstream = "{up}"' if up else ""
        text += EXPERIMENT.format(name=name, route=route, upstream=alt)
    return text


def run(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "autoexp.toml"
    path.write_text(text)
    code = main(["proxy", "--config", str(path), "--check"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOEXP_SECRET", SECRET)
    monkeypatch.delenv("AUTOEXP_STORE", raising=False)
    monkeypatch.delenv("AUTOEXP_ADMIN_TOKEN", raising=False)


def test_a_servable_config_is_reported_and_nothing_is_created_or_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The default upstream listens (a real socket on loopback); the alternative's does
    # not. A later route under an earlier one's prefix gets no traffic, one over it some.
    db = tmp_path / "state.db"
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        up = f"http://127.0.0.1:{listening.getsockname()[1]}"
        closed = f"http://127.0.0.1:{free_port()}"
        text = config(
            f"sqlite:///{db}",
            up,
            ("search", 'path_prefix = "/search", reward_from = "status"', closed),
            ("deep", 'path_prefix = "/search/deep", method = "GET"', ""),
            ("root", 'path_prefix = "/", header = "X-Beta: 1"', ""),
        )
        code, out, err = run(tmp_path, text, capsys)
    assert code == 0 and err == "", (out, err)
    assert not db.exists()  # checked, not created
    assert f"sqlite:///{db}: not there yet; serving creates it" in out
    assert f"upstream  {up}: answers" in out
    assert f"b upstream: {closed}: does not answer yet (ConnectionRefusedError" in out
    assert (
        "search: a (control), b; thompson-beta, conservative budget (alpha 0.05), "
        "traffic cap (explore_share 0.2); off-policy-cs"
    ) in out
    assert "route: path_prefix /search; reward from status" in out
    assert "route: path_prefix /search/deep, method GET; no reward read from the answer" in out
    assert (
        "warning: experiments.deep.route: every request it matches goes to "
        "experiments.search, listed before it: this experiment gets no traffic"
    ) in out
    assert (
        "warning: experiments.root.route: some requests it matches go to experiments.search" in out
    )
    assert "admin     off (no AUTOEXP_ADMIN_TOKEN)" in out
    assert out.rstrip().endswith("ready to serve")


def test_an_admin_token_is_reported_and_a_short_one_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = config(
        f"sqlite:///{tmp_path / 'x.db'}", "http://127.0.0.1:9", ("a", 'path_prefix = "/"', "")
    )
    for token, admin in [("", "off (no AUTOEXP_ADMIN_TOKEN)"), ("x" * 16, "on")]:
        monkeypatch.setenv("AUTOEXP_ADMIN_TOKEN", token)
        code, out, _ = run(tmp_path, text, capsys)
        assert code == 0 and f"admin     {admin}" in out
    monkeypatch.setenv("AUTOEXP_ADMIN_TOKEN", "x" * 15)  # serving refuses it: so does the check
    code, out, err = run(tmp_path, text, capsys)
    assert code == 2 and out == ""
    assert "AUTOEXP_ADMIN_TOKEN: at least 16 characters (got 15)" in err


def test_a_redis_store_is_asked_what_it_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_server: Any
) -> None:
    redis_server.flush()
    store = open_store(redis_server.url)
    Engine(store, [spec()], secret=SECRET, seed=1).close()  # declares "ranker"
    store.close()
    text = config(redis_server.url, "http://127.0.0.1:9", ("search", 'path_prefix = "/"', ""))
    code, out, _ = run(tmp_path, text, capsys)
    assert code == 0, out
    assert f"store     {redis_server.url}: answers; holds ranker" in out


def test_a_store_that_does_not_answer_fails_the_check_and_its_password_is_not_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    one = ("ranker", "", "")
    code, out, _ = run(tmp_path, config(url, "http://127.0.0.1:9", one), capsys)
    assert code == 1, out
    assert "hunter2" not in out
    assert f"{redacted(url)}: does not answer (" in out and ":***@127.0.0.1" in out
    assert out.rstrip().endswith(
        "not ready: the store does not answer (served anyway, the proxy would send every "
        "request to control until it does)"
    )
    missing = tmp_path / "no-such-directory" / "state.db"
    code, out, _ = run(tmp_path, config(f"sqlite:///{missing}", "http://127.0.0.1:9", one), capsys)
    assert code == 1 and f"directory {missing.parent} does not exist" in out, out
    assert not missing.parent.exists()


def test_a_config_serving_would_refuse_is_refused_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = config(f"sqlite:///{tmp_path / 's.db'}", "http://127.0.0.1:9", ("ranker", "", ""))
    code, _, err = run(tmp_path, good.replace("explore_share = 0.2", "explore_share = 5"), capsys)
    assert code == 2 and "experiments.ranker.safety.explore_share" in err, err
    monkeypatch.delenv("AUTOEXP_SECRET")
    code, out, err = run(tmp_path, good, capsys)
    assert code == 2 and out == "" and "secret: no signing key; set AUTOEXP_SECRET" in err
    code, out, err = run(tmp_path, 'secret = "a-test-secret-of-32-bytes-at-least"\n' + good, capsys)
    assert code == 0 and "warning: secret: read from the config file" in out, (out, err)
    # a store URL no store could answer at: refused (2), as serving refuses it, not "does
    # not answer" (1, "served anyway")
    one = ("ranker", "", "")
    for url, why in (
        ("http://x", "store: unknown URL scheme 'http'"),
        ("redis://:pw@127.0.0.1:six/0", "store: bad port in 'redis://:***@127.0.0.1:six/0'"),
        ("redis://127.0.0.1:1/abc", "store: the database in 'redis://127.0.0.1:1/abc' must be"),
    ):
        monkeypatch.setenv("AUTOEXP_SECRET", SECRET)
        code, out, err = run(tmp_path, config(url, "http://127.0.0.1:9", one), capsys)
        assert code == 2 and why in err and "pw" not in err + out, (out, err)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_store_holding_an_experiment_with_other_shapes_is_refused_as_serving_would_be(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest, kind: str
) -> None:
    # The store holds ranker with three arms, the config has two: serving refuses it
    # (exit 2 with the store's reason), where the check used to say "ready to serve".
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
        url = server.url
    else:
        url = f"sqlite:///{tmp_path / 'state.db'}"
    two = config(url, "http://127.0.0.1:9", ("ranker", "", ""))
    three = parse_config(tomllib.loads(two.replace('{ name = "b" }', '"b", "c"')))
    store = open_store(url)
    Engine(store, three.experiments, secret=SECRET, log_flush_s=0).close()
    before = {k: v.tolist() for k, v in store.read("ranker").items()}
    store.close()
    code, out, err = run(tmp_path, two, capsys)
    assert code == 2 and out == "", out
    assert re.search(
        r"experiments\.ranker: store\.declare: 'ranker'\.\S+ has shape \(1, 3\) "
        r"\(asked \(1, 2\)\): a different policy or arm count on the same store; a changed "
        r"experiment starts afresh under a new name",
        err,
    ), err
    store = open_store(url)  # nothing written
    assert {k: v.tolist() for k, v in store.read("ranker").items()} == before
    assert store.experiments() == ["ranker"]
    store.close()
    # under a new name it starts afresh beside the old one
    code, out, _ = run(tmp_path, config(url, "http://127.0.0.1:9", ("ranker2", "", "")), capsys)
    assert code == 0 and "answers; holds ranker" in out and "ready to serve" in out, out
    assert "warning" not in out
    # the same shapes under other names: served, the old evidence carrying over, said
    renamed = two.replace('{ name = "b" }', '"b", "c"').replace('"a", "b"', '"a", "x"')
    code, out, _ = run(tmp_path, renamed, capsys)
    assert code == 0 and "ready to serve" in out, out
    assert (
        "warning: experiments.ranker: the store holds its state for alternatives ['a', 'b', "
        "'c'], the config names them ['a', 'x', 'c']: the evidence gathered for each position "
        "counts for the config's name at that position" in out
    ), out


def route(name: str, prefix: str = "/", **options: Any) -> Route:
    return Route(experiment=name, upstreams=(None, None), path_prefix=prefix, **options)


@pytest.mark.parametrize(
    ("early", "late", "said"),
    [
        (route("a", "/s"), route("b", "/s/x"), "every"),  # under its prefix
        (route("a", "/s"), route("b", "/s"), "every"),  # the same
        (route("a", "/s/x"), route("b", "/s"), "some"),  # only under /s/x
        (route("a", "/s"), route("b", "/t"), None),  # apart
        (route("a", method="GET"), route("b", method="POST"), None),
        (route("a", method="GET"), route("b"), "some"),
        (route("a"), route("b", method="GET"), "every"),
        (route("a", host="x.io"), route("b", host="y.io"), None),
        (route("a", host="x.io"), route("b"), "some"),
        (route("a", header=("X-Beta", "1")), route("b", header=("x-beta", "1")), "every"),
        (route("a", header=("X-Beta", "1")), route("b", header=("X-Beta", "2")), None),
        (route("a", header=("X-Beta", "1")), route("b", header=("X-Other", "1")), "some"),
        (route("a", header=("X-Beta", "1")), route("b"), "some"),
    ],
)
def test_overlapping_routes_are_told_apart(early: Route, late: Route, said: str | None) -> None:
    # the proxy gives a request to the first route that matches it
    warnings = overlaps([early, late])
    if said is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith("experiments.b.route: " + said)
    assert overlaps([late]) == []


def test_a_route_that_gets_no_traffic_is_told_so_once() -> None:
    # b under a's prefix gets nothing: that c (also before it) would take some of its
    # requests is not worth a second warning
    said = overlaps([route("a"), route("c", "/s"), route("b", "/s/x")])
    assert [w.split(":")[0] for w in said] == ["experiments.c.route", "experiments.b.route"]
    assert "experiments.a, listed before it: this experiment gets no traffic" in said[1]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://user:pw@h/1", "rediss://user:***@h/1"),
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
        (
            "redis://:pw@[::1]:6379/0?socket_timeout_s=1",
            "redis://:***@[::1]:6379/0?socket_timeout_s=1",
        ),
        ("sqlite:////var/lib/autoexp.db", "sqlite:////var/lib/autoexp.db"),
    ],
)
def test_a_store_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


@pytest.mark.parametrize("query", ["bogus=1", "socket_timeout_s=soon"])
def test_a_bad_store_url_is_refused_without_its_password(query: str) -> None:
    with pytest.raises(ConfigError, match=r"redis://:\*\*\*@127\.0\.0\.1:1/0") as e:
        open_store(f"redis://:pw-in-url@127.0.0.1:1/0?{query}")
    assert "pw-in-url" not in str(e.value)
