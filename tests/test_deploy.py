"""``deploy/``: the container, compose and Kubernetes files.

This machine has no Docker daemon and no cluster, so what is checked is what can be checked
without them: every file parses and has the structure the sidecar needs (probes, non-root
user, config path, store and secret from the environment), the example config loads, and
the image's entrypoint command (``autoexp proxy`` with the image's arguments) serves and
stops cleanly as a real process on 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from autoexp.config import parse_config
from autoexp.store import open_store

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CONFIG_PATH = "/etc/autoexp/autoexp.toml"
IMAGE_ARGS = ["--config", CONFIG_PATH, "--host", "0.0.0.0", "--port", "8700"]
ADMIN_TOKEN = "deploy-test-admin-token-0123456789"
METRICS = "/_autoexp/metrics"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    pairs = []
    for line in lines:
        word, _, rest = line.partition(" ")
        pairs.append((word.upper(), rest.strip()))
    return pairs


def stages(instructions: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], ...]:
    """The instructions of each stage, its ``FROM`` first."""
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return tuple(instructions[a:b] for a, b in zip(starts, [*starts[1:], None], strict=True))


def kubernetes_docs() -> dict[str, dict[str, Any]]:
    with open(DEPLOY / "kubernetes.yaml") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one document of each kind"
    return by_kind


def sidecar(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "autoexp"
    ]
    return container


def test_the_dockerfile_is_multi_stage_non_root_and_runs_the_proxy() -> None:
    instructions = dockerfile_instructions()
    # the base named once, before the stages, for a mirror's copy (--build-arg)
    assert instructions[0] == ("ARG", "PYTHON_IMAGE=python:3.11-slim")
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    runs = [args for word, args in instructions if word == "RUN"]
    assert any(r.startswith("/opt/autoexp/bin/pip install .") for r in runs)
    assert ("COPY", "--from=builder /opt/autoexp /opt/autoexp") in instructions
    # plain syntax: no frontend image to pull (a `# syntax=` line makes BuildKit fetch
    # one from Docker Hub, which failed the build here behind no Docker Hub), and no
    # BuildKit-only `RUN --mount`, so the legacy builder, podman and kaniko build it too
    # (a parser directive is read only at the file's top)
    assert not (DEPLOY / "Dockerfile").read_text().lower().replace(" ", "").startswith("#syntax")
    assert not any("--mount" in args for _, args in instructions)
    users = [args for word, args in instructions if word == "USER"]
    assert users == ["10001:10001"]  # numeric, so Kubernetes' runAsNonRoot can verify it
    assert ("EXPOSE", "8700") in instructions
    assert json.loads(dict(instructions)["ENTRYPOINT"]) == ["autoexp", "proxy"]
    assert json.loads(dict(instructions)["CMD"]) == IMAGE_ARGS
    # the runtime stage: its default store, volume and health check
    _, runtime = stages(instructions)
    env = " ".join(args for word, args in runtime if word == "ENV")
    assert "AUTOEXP_STORE=sqlite:////var/lib/autoexp/autoexp.db" in env
    assert "PATH=/opt/autoexp/bin:$PATH" in env  # `autoexp` and the health check's python
    assert ("VOLUME", '["/var/lib/autoexp"]') in runtime
    assert any("-o 10001 -g 10001" in r and "/var/lib/autoexp" in r for r in runs)
    (health,) = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert "urllib.request.urlopen('http://127.0.0.1:8700/_autoexp/healthz'" in health


def build_context(into: Path) -> None:
    """The builder stage's files, laid out as ``docker build -f deploy/Dockerfile .`` gives
    them to its ``pip install .``: the repository root through
    ``Dockerfile.dockerignore`` (``*`` then ``!`` for each entry let in, caches out),
    copied by the stage's ``COPY`` lines into its ``WORKDIR``."""
    root = DEPLOY.parent
    rules = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [r.strip() for r in rules if r.strip() and not r.lstrip().startswith("#")]
    assert rules[0] == "*", "the context starts empty and lets entries in by name"
    let_in = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    instructions = dockerfile_instructions()
    builder, _ = stages(instructions)
    assert ("WORKDIR", "/src") in builder
    copies = [args.split() for word, args in builder if word == "COPY"]
    assert copies and not any(a[0].startswith("--") for a in copies)
    for *sources, dest in copies:
        for source in sources:
            assert source in let_in, f"COPY {source}: left out of the context by the dockerignore"
            target = into / dest / Path(source).name if dest.endswith("/") else into / dest
            if (root / source).is_dir():
                shutil.copytree(
                    root / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]")
                )
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / source, target)


def test_the_builder_stage_builds_the_package_from_what_it_copies(tmp_path: Path) -> None:
    # The image's `pip install .`, short of Docker: a wheel built from exactly the files
    # the builder stage has. A file the project's metadata names but the stage does not
    # copy (the license, the README) fails the build here as it would in `docker build`.
    # Built without isolation, with the test extra's setuptools, so nothing is downloaded.
    context = tmp_path / "src"
    build_context(context)
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*pip_wheel, "--no-index", "--quiet", "--wheel-dir", str(wheels), str(context)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("autoexp-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = zf.read(metadata).decode()
    dist_info = metadata.rsplit("/", 1)[0]
    assert f"{dist_info}/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in meta.splitlines()
    # the three packages, their data and the README as the long description
    for module in ("autoexp/cli.py", "autoexp/proxy/ui.py", "autoexp/py.typed"):
        assert module in names
    assert any(n.startswith("policies/") for n in names)
    assert any(n.startswith("simulators/") for n in names)
    assert "# autoexp" in meta
    assert not any("__pycache__" in n for n in names)


def upstream_port() -> int:
    """The application's port in the example config (``[proxy] upstream``, on 127.0.0.1)."""
    upstream = tomllib.loads((DEPLOY / "autoexp.toml").read_text())["proxy"]["upstream"]
    host, _, port = upstream.removeprefix("http://").partition(":")
    assert host == "127.0.0.1", "the application shares the sidecar's network: loopback"
    return int(port)


def test_compose_puts_the_sidecar_in_front_of_a_demo_application() -> None:
    with open(DEPLOY / "compose.yaml") as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    assert set(services) == {"redis", "app", "autoexp"}
    assert services["redis"]["image"] == "redis:7"
    assert services["redis"]["command"][-2:] == ["--appendonly", "yes"]
    sidecar = services["autoexp"]
    assert sidecar["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / ".." / sidecar["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert sidecar["environment"] == {
        "AUTOEXP_STORE": "redis://redis:6379/0",
        "AUTOEXP_SECRET": "${AUTOEXP_SECRET:?set AUTOEXP_SECRET}",
        "AUTOEXP_ADMIN_TOKEN": "${AUTOEXP_ADMIN_TOKEN:-}",  # empty: no admin API
    }
    (mount,) = sidecar["volumes"]
    source, target, mode = mount.split(":")
    assert (DEPLOY / source).resolve() == DEPLOY / "autoexp.toml"
    assert (target, mode) == (CONFIG_PATH, "ro")
    assert set(sidecar["depends_on"]) == {"redis", "app"}
    assert "http://127.0.0.1:8700/_autoexp/readyz" in " ".join(sidecar["healthcheck"]["test"])
    # as in a Pod: the sidecar joins the application's network namespace, so the config's
    # 127.0.0.1 upstream is the application, and the one published port is the sidecar's
    assert sidecar["network_mode"] == "service:app" and "ports" not in sidecar
    app = services["app"]
    assert app["ports"] == ["127.0.0.1:${AUTOEXP_PORT:-8700}:8700"]
    assert app["image"] == "python:3.11-slim"
    command = " ".join(app["command"])
    assert f"-m http.server {upstream_port()} --bind 127.0.0.1" in command


def test_kubernetes_runs_the_sidecar_in_front_of_the_app() -> None:
    docs = kubernetes_docs()
    assert set(docs) == {"ConfigMap", "Secret", "Deployment", "Service"}
    assert docs["ConfigMap"]["metadata"]["name"] == "autoexp-config"
    secret = docs["Secret"]
    assert (secret["metadata"]["name"], secret["type"]) == ("autoexp-secret", "Opaque")
    assert secret["stringData"] == {
        "AUTOEXP_SECRET": "change-me-to-at-least-16-bytes",
        "AUTOEXP_ADMIN_TOKEN": "change-me-to-at-least-16-chars",
    }
    assert all(len(value) >= 16 for value in secret["stringData"].values())
    deployment = docs["Deployment"]
    assert deployment["metadata"]["name"] == "app"
    pod = deployment["spec"]["template"]["spec"]
    assert {c["name"]: c["image"] for c in pod["containers"]} == {
        "app": "example/app:latest",
        "autoexp": "autoexp:latest",
    }
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    c = sidecar(deployment)
    assert c["args"] == IMAGE_ARGS
    assert [p["containerPort"] for p in c["ports"]] == [8700]
    # Prometheus's pod discovery by annotation: the sidecar's port and its metrics (the
    # path is scraped for real in the image's test below)
    scrape = deployment["spec"]["template"]["metadata"]["annotations"]
    assert scrape["prometheus.io/scrape"] == "true"
    assert scrape["prometheus.io/port"] == "8700" and scrape["prometheus.io/path"] == METRICS
    env = {e["name"]: e for e in c["env"]}
    assert env["AUTOEXP_STORE"]["value"] == "redis://redis:6379/0"
    for key in ("AUTOEXP_SECRET", "AUTOEXP_ADMIN_TOKEN"):  # both keys from the Secret
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("autoexp-secret", key)
    assert c["livenessProbe"]["httpGet"] == {"path": "/_autoexp/healthz", "port": 8700}
    assert c["readinessProbe"]["httpGet"] == {"path": "/_autoexp/readyz", "port": 8700}
    # SIGTERM stops the listening at once: it comes after a pause in which the Service
    # stops sending, and the pod's grace covers the pause and the drain (10 s at most)
    pause = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep" and 0 < int(pause[1]) <= 10
    assert pod["terminationGracePeriodSeconds"] >= int(pause[1]) + 10 + 5
    # the application is the sidecar's upstream (127.0.0.1: one Pod), and stops after the
    # sidecar has stopped taking requests, so none it forwards meets a closed port
    (app,) = [a for a in pod["containers"] if a["name"] == "app"]
    assert [p["containerPort"] for p in app["ports"]] == [upstream_port()]
    app_pause = app["lifecycle"]["preStop"]["exec"]["command"]
    assert app_pause[0] == "sleep" and int(app_pause[1]) > int(pause[1])
    security = c["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert set(c["resources"]) == {"requests", "limits"}
    assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}

    # the config file the args name is the ConfigMap's key, mounted read-only
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    config_mount = mounts[str(Path(CONFIG_PATH).parent)]
    assert config_mount["readOnly"] is True
    assert volumes[config_mount["name"]]["configMap"]["name"] == "autoexp-config"
    assert Path(CONFIG_PATH).name in docs["ConfigMap"]["data"]
    # with a read-only root, numba's cache must go to a writable volume
    cache = env["NUMBA_CACHE_DIR"]["value"]
    assert any(
        cache.startswith(path + "/")
        for path in mounts
        if "emptyDir" in volumes[mounts[path]["name"]]
    )

    # the application's Service sends its traffic to the sidecar's port, not the app's
    service = docs["Service"]
    assert service["metadata"]["name"] == "app"
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    (target,) = [p for p in c["ports"] if p["name"] == port["targetPort"]]
    assert (port["port"], target["containerPort"]) == (80, 8700)


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_the_manifest_validates_strictly_against_the_kubernetes_api_schema(version: str) -> None:
    # Each document against the API's published OpenAPI schema of that release (the
    # oldest this manifest's fields need, and the newest the validator knows), strictly:
    # an unknown field is refused, as `kubectl apply --validate=strict` refuses it, where
    # the structure test above would only miss the key it looks for.
    docs = kubernetes_docs()
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)
    # the validator has teeth: the sidecar's readiness probe misspelt, a port as a string
    bad = copy.deepcopy(docs["Deployment"])
    probe = sidecar(bad)
    probe["readinesProbe"] = probe.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="'readinesProbe' was unexp"):
        kubernetes_validate.validate(bad, version, strict=True)
    bad = copy.deepcopy(docs["Deployment"])
    sidecar(bad)["ports"][0]["containerPort"] = "8700"
    with pytest.raises(kubernetes_validate.ValidationError, match="'8700' is not of type"):
        kubernetes_validate.validate(bad, version, strict=True)


def test_the_example_config_is_the_configmap_and_loads(monkeypatch: Any) -> None:
    monkeypatch.delenv("AUTOEXP_STORE", raising=False)
    monkeypatch.delenv("AUTOEXP_SECRET", raising=False)
    text = (DEPLOY / "autoexp.toml").read_text()
    assert kubernetes_docs()["ConfigMap"]["data"]["autoexp.toml"] == text
    raw = tomllib.loads(text)
    assert "secret" not in raw and "store" not in raw  # both come from the environment
    config = parse_config(raw)
    (spec,) = config.experiments
    assert spec.name == "ranker"
    assert spec.alternatives == ("v1", "v2")
    assert spec.policy.name == "traffic-cap"  # thompson-beta inside the 10% cap
    assert raw["experiments"]["ranker"]["policy"] == {"name": "thompson-beta"}
    assert raw["experiments"]["ranker"]["safety"] == {"explore_share": 0.1}
    assert raw["experiments"]["ranker"]["test"]["name"] == "off-policy-cs"
    assert spec.test is not None
    assert spec.reward_range == (0.0, 1.0)
    assert (config.store, config.secret) == (None, None)
    # a proxy in front of the application: every GET decided, rewarded from its status
    assert config.proxy is not None and config.proxy.upstream == "http://127.0.0.1:8080"
    (route,) = config.routes
    assert (route.experiment, route.path_prefix, route.method) == ("ranker", "/", "GET")
    assert route.reward_from == "status"


def test_the_example_config_passes_the_check_the_deploy_readme_shows(
    tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    # `autoexp proxy --config ... --check` (deploy/README.md), store and secret from the
    # environment as the image has them: ready, and nothing created
    from autoexp.cli import main

    monkeypatch.setenv("AUTOEXP_SECRET", "deploy-test-secret-0123456789abc")
    monkeypatch.setenv("AUTOEXP_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("AUTOEXP_STORE", f"sqlite:///{tmp_path / 'x.db'}")
    assert main(["proxy", "--config", str(DEPLOY / "autoexp.toml"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "ranker: v1 (control), v2; thompson-beta, traffic cap (explore_share 0.1)" in out
    assert "route: path_prefix /, method GET; reward from status" in out
    assert "admin     on" in out
    assert "upstream  http://127.0.0.1:8080: " in out  # reported, not failed
    assert out.rstrip().endswith("ready to serve") and "warning" not in out
    assert not (tmp_path / "x.db").exists()


def wait_until_answering(proc: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"it exited: {proc.communicate(timeout=30)[0]}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 within 60 s")


def test_the_image_command_forwards_to_the_application_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    # What the image runs, outside a container: the entrypoint `autoexp proxy` with the
    # CMD's arguments and the example config, on loopback and free ports, store and keys
    # from the environment as the deployments set them, in front of the compose file's
    # stand-in application (python -m http.server on 127.0.0.1). Only the ports differ.
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<h1>the application</h1>\n")
    app_port, port = free_port(), free_port()
    config = tmp_path / "autoexp.toml"
    text = (DEPLOY / "autoexp.toml").read_text()
    upstream = 'upstream = "http://127.0.0.1:8080"'
    assert text.count(upstream) == 1
    config.write_text(text.replace(upstream, upstream.replace("8080", str(app_port))))
    args = IMAGE_ARGS[:]
    args[args.index("--config") + 1] = str(config)
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "AUTOEXP_SECRET": "deploy-test-secret-0123456789abc",
        "AUTOEXP_ADMIN_TOKEN": ADMIN_TOKEN,
        "AUTOEXP_STORE": f"sqlite:///{tmp_path / 'x.db'}",
    }
    base = f"http://127.0.0.1:{port}"
    app = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(app_port), "--bind", "127.0.0.1"],
        cwd=tmp_path / "site",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoexp.cli", "proxy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_until_answering(app, f"http://127.0.0.1:{app_port}/")
        wait_until_answering(proc, f"{base}/_autoexp/healthz")
        assert httpx.get(f"{base}/_autoexp/readyz", timeout=10).status_code == 200
        # the application's traffic, through the sidecar: 30 users, each request
        # decided, answered by the application and told its decision's token
        with httpx.Client(base_url=base, timeout=30) as client:
            for i in range(30):
                r = client.get("/", headers={"X-User-Id": f"user-{i}"})
                assert r.status_code == 200 and "the application" in r.text
                assert r.headers["X-Autoexp-Decision"]
            again = client.get("/", headers={"X-User-Id": "user-0"})  # a returning user
            assert again.status_code == 200 and again.headers["X-Autoexp-Decision"]
            decided = client.post("/_autoexp/decide", json={"experiment": "ranker"})
            assert decided.status_code == 200, decided.text
            assert decided.json()["alternative"] in {"v1", "v2"}
            # the admin API, with the Secret's token only
            admin = "/_autoexp/admin/experiments"
            assert client.get(admin).status_code == 401
            listed = client.get(admin, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert listed.status_code == 200, listed.text
            assert [e["experiment"] for e in listed.json()["experiments"]] == ["ranker"]
            pod = kubernetes_docs()["Deployment"]["spec"]["template"]["metadata"]
            scraped = pod["annotations"]["prometheus.io/path"]  # where Prometheus looks
            assert "autoexp_config_info" in client.get(scraped).text
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        for p in (proc, app):
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)  # reaped and its pipe closed: no ResourceWarning
    assert proc.returncode == 0, out
    assert "experiments ranker" in out
    # after the drain: every decision logged, each forwarded one rewarded once from its
    # status (200: 1.0), and the returning user given its first alternative again
    store = open_store(env["AUTOEXP_STORE"])
    try:
        log = store.records("ranker")
    finally:
        store.close()
    decisions = [r for r in log if r["type"] == "decision"]
    rewards = [r for r in log if r["type"] == "reward"]
    assert len(decisions) == 32  # 31 GETs and the POST /_autoexp/decide
    assert len(rewards) == 31 and {r["reward"] for r in rewards} == {1.0}
    assert {r["decision_id"] for r in rewards} < {r["decision_id"] for r in decisions}
    arms: dict[str, set[int]] = {}
    for r in decisions:
        if r["unit_hash"] is not None:
            arms.setdefault(r["unit_hash"], set()).add(r["arm"])
    assert len(arms) == 30 and all(len(a) == 1 for a in arms.values())
