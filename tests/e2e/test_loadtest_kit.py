"""The load-test and deployment kit: configs the real tools accept, scripts that work.

No container engine here, so each artefact is checked by the tool that would
read it, or by running its command line for real:

- ``haproxy -c`` on the configs run-local generates and on compose.cfg (which
  must equal the template rendered for compose); ``promtool check config`` on
  prometheus-fleet.yml and on run-local's generated config;
- ``node`` parses k6-script.js as the ES module k6 loads (``node --check`` on the
  file itself proves nothing: Node 18 refuses any ``import``, Node 20 accepts
  any syntax error after one), and runs it against stub k6 modules fed real
  goblet answers: its pkt-lines equal loadtest/protocol.py's, its checks pass
  valid git and fail an ERR answer; its stages and thresholds are the documented ones;
- the compose file, Dockerfile and Kubernetes manifest have the required keys,
  and the goblet command lines in them start a real goblet;
- ``loadtest.py`` against a real goblet in both modes and both ways in: JSON
  parsed, success rate 100 %; against a dead port, a missing repo and an
  upstream that fails mid-fill: failures reported, exit status 1; its loops stop
  at ``--duration``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from goblet.options import parse_size
from ruamel.yaml import YAML

from loadtest import protocol, topology
from tests.e2e.conftest import Repos
from tests.e2e.test_fleet import wait_for
from tests.support.cachedir import settle
from tests.support.net import free_port, http_get
from tests.support.netns import in_own_network, run_until_ready
from tests.support.proxy import ADDON, REPO_ROOT, GobletProxy, mitmdump_binary
from tests.support.repos import add_commit, list_refs
from tests.support.upstream_client import UpstreamServer

LOADTEST = REPO_ROOT / "loadtest"
INSTANCE = "kit-goblet"
K6_STAGES = [("2m", 10), ("5m", 10), ("2m", 50), ("5m", 50), ("2m", 100), ("5m", 100),
               ("2m", 0)]


def tool(name: str, package: str) -> str:
    """Path of a required binary; fails naming the apt package (never skips)."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail(f"{name} is missing: `apt-get install -y {package}` (.ci/run must install it)")


def yaml_docs(path: Path) -> list[Any]:
    """Every document of a YAML file (ruamel, safe loader)."""
    return [d for d in YAML(typ="safe").load_all(path.read_text(encoding="utf-8")) if d]


def ready(port: int) -> bool | None:
    """True once /readyz answers 200 on ``port`` (None until then)."""
    try:
        return http_get(port, "/readyz")[0] == 200 or None
    except OSError:
        return None


# -- configs the tools accept ------------------------------------------------------


def sample_instances() -> list[topology.Instance]:
    return [topology.Instance(f"goblet-{n}", "127.0.0.1", 18000 + 10 * n, 18001 + 10 * n,
                              18002 + 10 * n, f"/tmp/c{n}") for n in (1, 2, 3)]


@pytest.mark.parametrize("name", ["sharded", "shared", "compose"])
def test_haproxy_accepts_every_config(name: str, tmp_path: Path) -> None:
    haproxy = tool("haproxy", "haproxy")
    if name == "compose":
        path = LOADTEST / "haproxy" / "compose.cfg"
        assert path.read_text() == topology.compose_haproxy_config(), \
            "compose.cfg drifted: python3 -m loadtest.topology > loadtest/haproxy/compose.cfg"
    else:
        path = tmp_path / "haproxy.cfg"
        path.write_text(topology.haproxy_config(
            name, sample_instances(), http_bind="127.0.0.1:18080",
            stats_bind="127.0.0.1:18404", connect_bind="127.0.0.1:13128"))
    res = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    text = path.read_text()
    assert "hash-type consistent" in text and "balance hash var(txn.repo)" in text
    assert not re.search(r"^\s*balance uri", text, re.MULTILINE), \
        "hashing the whole URI splits a repo over shards"
    assert "http-check send meth GET uri /healthz" in text
    assert re.search(r"bind \S*:8404|bind 127\.0\.0\.1:18404", text)


def test_the_shard_key_strips_exactly_the_git_suffixes() -> None:
    """The regsub chain in the template, applied as HAProxy applies it."""
    text = topology.template("sharded")
    chain = re.search(r"set-var\(txn\.repo\) path,(\S+)", text)
    assert chain is not None
    suffixes = re.findall(r"regsub\('([^']+)\$',''\)", chain.group(1))
    assert suffixes == ["/info/lfs/.*", "/info/refs", "/git-upload-pack", "/git-receive-pack"]

    def key(path: str) -> str:
        target = path.split("?", 1)[0]
        for suffix in suffixes:  # HAProxy's regsub takes regular expressions
            target = re.sub(suffix + "$", "", target)
        return target

    repo = "/github.com/org/app.git"
    paths = [f"{repo}/info/refs?service=git-upload-pack", f"{repo}/git-upload-pack",
             f"{repo}/info/refs?service=git-receive-pack", f"{repo}/git-receive-pack",
             f"{repo}/info/lfs/objects/batch", f"{repo}/info/lfs/locks/verify",
             f"{repo}/info/lfs/goblet/{'T' * 43}/{'a' * 64}"]
    assert {key(p) for p in paths} == {repo}
    assert key("/github.com/org/app/info/refs") != repo  # another cache key, another shard


def test_promtool_accepts_the_fleet_configs(tmp_path: Path) -> None:
    promtool = tool("promtool", "prometheus")
    generated = tmp_path / "prometheus.yml"
    generated.write_text(json.dumps(topology.prometheus_config(
        sample_instances(), haproxy_stats="127.0.0.1:18404",
        rules=str(topology.PROMETHEUS_DIR / "alerts.yml"))))
    for path in (topology.PROMETHEUS_DIR / "prometheus-fleet.yml", generated):
        res = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                             text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "SUCCESS: 1 rule files found" in res.stdout + res.stderr
    (fleet,) = yaml_docs(topology.PROMETHEUS_DIR / "prometheus-fleet.yml")
    jobs = {j["job_name"]: j for j in fleet["scrape_configs"]}
    assert [(c["targets"], c["labels"]["instance"])
            for c in jobs["goblet"]["static_configs"]] == [
        ([f"goblet-{n}:9464"], f"goblet-{n}") for n in (1, 2, 3)]
    assert jobs["haproxy"]["static_configs"][0]["targets"] == ["haproxy:8404"]


def node_check(node: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Parse ``path`` as an ES module (what k6 loads)."""
    with path.open("rb") as source:
        return subprocess.run([node, "--input-type=module", "--check"], stdin=source,
                              capture_output=True, text=True, timeout=30, check=False)


def test_node_parses_the_k6_modules(tmp_path: Path) -> None:
    node = tool("node", "nodejs")
    for name in ("k6-script.js", "k6-pktline.js"):
        res = node_check(node, LOADTEST / name)
        assert res.returncode == 0, res.stderr
    broken = tmp_path / "broken.js"
    broken.write_text((LOADTEST / "k6-script.js").read_text() + "\nexport const x = ;\n")
    assert node_check(node, broken).returncode != 0, "the syntax check does not check"


# -- compose, Dockerfile, Kubernetes -------------------------------------------------


def compose() -> dict[str, Any]:
    (doc,) = yaml_docs(LOADTEST / "docker-compose.loadtest.yml")
    assert isinstance(doc, dict)
    return doc


def test_compose_file_has_the_seed_topology() -> None:
    services = compose()["services"]
    assert {"goblet-1", "goblet-2", "goblet-3", "haproxy", "prometheus", "grafana", "k6"} \
        <= set(services)
    for n in (1, 2, 3):
        goblet = services[f"goblet-{n}"]
        assert goblet["build"]["context"] == ".." and goblet["build"]["dockerfile"] == "Dockerfile"
        assert f"--set=goblet_instance=goblet-{n}" in goblet["command"]
        assert "--set=goblet_prefix_port=8081" in goblet["command"]
        assert "--set=goblet_metrics_port=9464" in goblet["command"]
        volumes = goblet["volumes"]
        assert f"cache-{n}:/var/cache/goblet" in volumes, "one cache volume per shard"
        assert "certs:/etc/goblet/certs:ro" in volumes
        assert "ports" not in goblet, "the goblets listen on 0.0.0.0: only compose reaches them"
    haproxy = services["haproxy"]
    assert haproxy["ports"] == ["127.0.0.1:8080:8080", "127.0.0.1:8404:8404"]
    assert "./haproxy/compose.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    assert all(haproxy["depends_on"][f"goblet-{n}"]["condition"] == "service_healthy"
               for n in (1, 2, 3))
    prometheus = services["prometheus"]
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus["volumes"]
    grafana = services["grafana"]
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning/datasources"] == \
        "./grafana/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./grafana/provisioning/dashboards"
    assert mounts["/var/lib/grafana/dashboards/goblet"] == "./grafana/dashboards"
    k6 = services["k6"]
    assert k6["profiles"] == ["loadtest"] and k6["environment"]["GOBLET_URL"] == \
        "http://haproxy:8080"
    mounted = [v.split(":")[0] for v in k6["volumes"]]
    assert mounted == ["./k6-script.js", "./k6-pktline.js"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (LOADTEST / source).exists(), f"compose mounts a missing {source}"


def dockerfile() -> str:
    return (REPO_ROOT / "Dockerfile").read_text()


def docker_json(instruction: str) -> list[str]:
    """The JSON array of a Dockerfile instruction (continuation lines joined)."""
    text = dockerfile().replace("\\\n", " ")
    m = re.search(rf"^{instruction}\s+(.*)$", text, re.MULTILINE)
    assert m is not None, instruction
    value: list[str] = json.loads(m.group(1).strip())
    return value


def test_dockerfile_is_slim_non_root_and_checks_health_without_curl() -> None:
    text = dockerfile()
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
    install = re.search(r"apt-get install[^\n]*\n?[^\n]*", text)
    assert install is not None and " git " in install.group(0)
    user = re.search(r"^USER (\S+)", text, re.MULTILINE)
    assert user is not None and user.group(1).split(":")[0] not in ("root", "0")
    health = re.search(r"^HEALTHCHECK .*$", text.replace("\\\n", " "), re.MULTILINE)
    assert health is not None and "curl" not in health.group(0) and "/healthz" in health.group(0)
    assert docker_json("VOLUME") == ["/var/cache/goblet", "/etc/goblet/certs"]
    ignored = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert ignored[0] == "*", ".dockerignore is an allow-list"
    assert not [line for line in ignored if line.startswith("!certs") or line == "!*"], \
        "the CA must stay out of images"


def manifest() -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in yaml_docs(LOADTEST / "kubernetes-sidecar-deployment.yaml"):
        by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def test_kubernetes_manifest_uses_a_native_sidecar() -> None:
    docs = manifest()
    assert {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor",
            "Service"} <= set(docs)
    (deployment,) = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always", "a plain init container never finishes"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                    "limits": {"cpu": "1", "memory": "2Gi"}}
    assert sidecar["securityContext"]["runAsUser"] != 0
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounts["git-cache"] == "/var/cache/goblet"
    (agent,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["HTTPS_PROXY"] == "http://127.0.0.1:8080"
    assert env["GIT_SSL_CAINFO"] == env["SSL_CERT_FILE"] == "/etc/goblet/trust/ca-bundle.pem"
    agent_mounts = {m["name"] for m in agent["volumeMounts"]}
    assert "goblet-trust" in agent_mounts and "goblet-ca" not in agent_mounts, \
        "the agent gets the CA certificate, never its key"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    (hpa,) = docs["HorizontalPodAutoscaler"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (10, 100)
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (pdb,) = docs["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (monitor,) = docs["ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (service,) = docs["Service"]
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "goblet"


# Oldest and newest Kubernetes the manifest claims (its header says >= 1.29).
K8S_VERSIONS = ("1.29.0", "1.37.0")
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # not in the core API schemas
GIB = 1024**3


def manifest_docs(text: str | None = None) -> list[dict[str, Any]]:
    source = text if text is not None else \
        (LOADTEST / "kubernetes-sidecar-deployment.yaml").read_text(encoding="utf-8")
    return [d for d in YAML(typ="safe").load_all(source) if d]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifest_matches_the_api_schemas(version: str) -> None:
    checked = 0
    for doc in manifest_docs():
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        used = kubernetes_validate.validate(doc, version, strict=True)
        assert used == version.rsplit(".", 1)[0], \
            f"kubernetes-validate has no {version} schemas (it fell back to {used})"
        checked += 1
    assert checked == len(manifest_docs()) - 1
    # The validator is strict: a misspelt field fails.
    (deployment,) = [d for d in manifest_docs() if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


def named_init_container_targets(docs: list[dict[str, Any]]) -> list[str]:
    """Services whose named targetPort only an init container of the selected pods declares.

    Kubernetes resolves a named targetPort against init containers' ports only
    from 1.32 on; before that such a Service has no endpoints.
    """
    pods = [(d["metadata"].get("namespace"), d["spec"]["template"]) for d in docs
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    problems = []
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"].get("selector") or {}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort")
            if not isinstance(target, str):
                continue
            for namespace, template in pods:
                labels = template["metadata"].get("labels", {})
                if namespace != svc["metadata"].get("namespace") or \
                        any(labels.get(k) != v for k, v in selector.items()):
                    continue
                spec = template["spec"]
                names = {p.get("name") for c in spec["containers"] for p in c.get("ports", ())}
                init = {p.get("name") for c in spec.get("initContainers", ())
                        for p in c.get("ports", ())}
                if target not in names and target in init:
                    problems.append(f"Service {svc['metadata']['name']} targets {target!r}, "
                                    "a port of an init container")
    return problems


def test_no_service_targets_a_named_port_of_an_init_container() -> None:
    text = (LOADTEST / "kubernetes-sidecar-deployment.yaml").read_text(encoding="utf-8")
    assert named_init_container_targets(manifest_docs(text)) == []
    services = [d for d in manifest_docs(text) if d["kind"] == "Service"]
    assert services and all(isinstance(p["targetPort"], int)
                            for s in services for p in s["spec"]["ports"])
    named = text.replace("targetPort: 9464", "targetPort: metrics")
    assert named != text
    assert named_init_container_targets(manifest_docs(named)) == [
        "Service terraform-agent-metrics targets 'metrics', a port of an init container"]


def test_every_container_can_pass_run_as_non_root() -> None:
    """With runAsNonRoot the kubelet needs a numeric user; an image's USER may be a name."""
    (deployment,) = manifest()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in [*pod["initContainers"], *pod["containers"]]:
        uid = container.get("securityContext", {}).get("runAsUser",
                                                        pod["securityContext"].get("runAsUser"))
        assert isinstance(uid, int) and uid > 0, container["name"]


def quantity(text: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": GIB, "Ti": 1024**4}
    m = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi|Ti)", text)
    assert m is not None, text
    return int(m.group(1)) * units[m.group(2)]


def test_the_cache_volume_leaves_the_headroom_the_sizing_rule_asks_for() -> None:
    """sizeLimit >= budget + 2 x largest repo + a few typical repos (cache.md's rule)."""
    (deployment,) = manifest()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    script = pod["initContainers"][0]["args"][0]
    sets = dict(re.findall(r"--set (goblet_\w+)=(\S+)", script))
    budget = parse_size("budget", sets["goblet_cache_max_bytes"])
    pack_cache = parse_size("pack cache", sets["goblet_pack_cache_max_bytes"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    size_limit = quantity(volumes["git-cache"]["emptyDir"]["sizeLimit"])
    text = (LOADTEST / "kubernetes-sidecar-deployment.yaml").read_text()
    m = re.search(r"(\d+) GiB \+ 2 x (\d+) GiB \(largest repo[^)]*\) \+\s*#?\s*(\d+) GiB = "
                  r"(\d+) GiB", text)
    assert m is not None, "the manifest states the rule next to the numbers"
    stated_budget, largest, typical, total = (int(g) * GIB for g in m.groups())
    assert stated_budget == budget and total == size_limit
    assert size_limit >= budget + 2 * largest + typical
    assert pack_cache <= budget // 5, "keep the pack cache well below the budget"


# -- the command lines in those files start a real goblet ------------------------------


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started, SIGKILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_compose_goblet_command_starts_goblet(tmp_path: Path, confdir: Path) -> None:
    entrypoint = docker_json("ENTRYPOINT")
    command = compose()["services"]["goblet-2"]["command"]
    ports = {"8080": free_port(), "8081": free_port(), "9464": free_port()}
    replacements = (("/opt/goblet/addon/goblet_addon.py", str(ADDON)),
                    ("/etc/goblet/certs", str(confdir)),
                    ("/var/cache/goblet", str(tmp_path / "cache")),
                    ("0.0.0.0", "127.0.0.1"))
    argv: list[str] = []
    for raw in [*entrypoint[2:], *command]:  # drop "tini --"
        arg = re.sub(r"\$\{GOBLET_HOSTS:\?[^}]*\}", "git.example.com", raw)
        for old, new in replacements:
            arg = arg.replace(old, new)
        arg = re.sub(r"(port[=_a-z]*=?)(8080|8081|9464)$",
                     lambda m: m.group(1) + str(ports[m.group(2)]), arg)
        argv.append(mitmdump_binary() if arg == "mitmdump" else arg)
    log = tmp_path / "goblet.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for("the compose goblet to be ready", lambda: ready(ports["9464"]), timeout=30)
        assert http_get(ports["8081"], "/healthz") == (200, "ok\n")  # the prefix port
        assert http_get(ports["8080"], "/healthz") == (200, "ok\n")  # the healthcheck's
        text = log.read_text()
        assert "goblet ready: instance=goblet-2" in text
        assert "hosts=git.example.com" in text
    finally:
        stop_group(proc)


def container_argv(args: list[str], tmp_path: Path, confdir: Path) -> list[str]:
    """An image's command line with the host's paths; ports and addresses as written."""
    argv = []
    for raw in args:
        arg = re.sub(r"\$\{GOBLET_HOSTS:[-?][^}]*\}", "git.example.com", raw)
        for old, new in (("/opt/goblet/addon/goblet_addon.py", str(ADDON)),
                         ("/etc/goblet/certs", str(confdir)),
                         ("/var/cache/goblet", str(tmp_path / "cache"))):
            arg = arg.replace(old, new)
        argv.append(mitmdump_binary() if arg == "mitmdump" else arg)
    return argv


@pytest.mark.parametrize("source", ["Dockerfile", "compose"])
def test_container_command_lines_listen_everywhere_only_by_choice(
        source: str, tmp_path: Path, confdir: Path) -> None:
    """Run as written (0.0.0.0, port 8080) in a network namespace of its own. The image
    makes no choice of its own: its command alone is refused, and starts with the opt-in
    the README's ``docker run`` adds; compose's goblets (no published ports) opt in."""
    entrypoint = docker_json("ENTRYPOINT")
    assert entrypoint[:2] == ["tini", "--"]
    if source == "Dockerfile":
        command = docker_json("CMD")
        assert not [a for a in command if "goblet_allow_open_proxy" in a or "proxyauth" in a]
        assert "--listen-host 0.0.0.0 -p 8080 --set goblet_allow_open_proxy=on" in \
            (REPO_ROOT / "README.md").read_text()
        command = [*command, "--set", "goblet_allow_open_proxy=on"]
    else:
        command = compose()["services"]["goblet-1"]["command"]
    opt_in = [a for a in command if "goblet_allow_open_proxy" in a]
    assert opt_in and opt_in[-1].endswith("goblet_allow_open_proxy=on")
    argv = container_argv([*entrypoint[2:], *command], tmp_path, confdir)
    res = run_until_ready(in_own_network(argv), tmp_path)
    assert "goblet ready" in res.stdout, res.stdout
    assert "open proxy on regular@0.0.0.0:8080" in res.stdout
    # Without the choice the same command refuses to start.
    at = next(i for i, a in enumerate(argv) if "goblet_allow_open_proxy" in a)
    without = argv[:at - 1] + argv[at + 1:] if argv[at - 1] == "--set" else \
        argv[:at] + argv[at + 1:]
    assert len(without) in (len(argv) - 1, len(argv) - 2) and "--set" not in without[-1:]
    res = run_until_ready(in_own_network(without), tmp_path)
    assert res.returncode == 1 and "refusing to start" in res.stdout, res.stdout


def test_kubernetes_sidecar_script_makes_ca_bundle_and_starts_goblet(tmp_path: Path) -> None:
    (deployment,) = manifest()["Deployment"]
    (sidecar,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert sidecar["command"] == ["/bin/sh", "-ec"]
    script: str = sidecar["args"][0]
    proxy_port, metrics_port = free_port(), free_port()
    for old, new in (("/etc/goblet/certs", str(tmp_path / "certs")),
                     ("/etc/goblet/trust", str(tmp_path / "trust")),
                     ("/var/cache/goblet", str(tmp_path / "cache")),
                     ("/opt/goblet/addon/goblet_addon.py", str(ADDON)),
                     ("exec tini -- mitmdump", f"exec {mitmdump_binary()}"),
                     ("python -c", f"{sys.executable} -c"),
                     ("--listen-port 8080", f"--listen-port {proxy_port}"),
                     ("goblet_metrics_port=9464", f"goblet_metrics_port={metrics_port}"),
                     ("goblet_metrics_host=0.0.0.0", "goblet_metrics_host=127.0.0.1")):
        assert old in script, old
        script = script.replace(old, new)
    (tmp_path / "trust").mkdir()
    env = {e["name"]: e["value"] for e in sidecar["env"] if "value" in e}
    env.update(PATH=os.environ["PATH"], POD_NAME="terraform-agent-7d9f-abcde",
               HOME=str(tmp_path), PYTHONUNBUFFERED="1")  # as the image's ENV
    log = tmp_path / "sidecar.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["/bin/sh", "-ec", script], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        wait_for("the sidecar's /readyz", lambda: ready(metrics_port), timeout=30)
        bundle = (tmp_path / "trust" / "ca-bundle.pem").read_text()
        ca_cert = (tmp_path / "certs" / "mitmproxy-ca-cert.pem").read_text()
        assert bundle.endswith(ca_cert) and bundle.count("BEGIN CERTIFICATE") > 10
        assert "PRIVATE KEY" not in bundle
        assert "instance=terraform-agent-7d9f-abcde" in log.read_text()
    finally:
        stop_group(proc)


# -- loadtest.py against a real goblet -----------------------------------------------


@pytest.fixture(scope="module")
def prefix_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer, confdir: Path,
          prefix_port: int) -> Iterator[GobletProxy]:
    px = GobletProxy(tmp_path_factory.mktemp("proxy"), hosts=[upstream.host],
                     upstream_ca=upstream.cert_path, confdir=confdir,
                     sets={"goblet_prefix_port": str(prefix_port), "goblet_instance": INSTANCE,
                           "goblet_upstream_timeout": "5"})
    with px:
        yield px


def loadtest(tmp_path: Path, *args: str, timeout: float = 60
             ) -> tuple[int, dict[str, Any], str]:
    """Run loadtest.py; (exit status, parsed JSON report, stdout+stderr)."""
    out = tmp_path / f"report-{time.monotonic_ns()}.json"
    res = subprocess.run([sys.executable, str(LOADTEST / "loadtest.py"), *args,
                          "--output", str(out)], capture_output=True, text=True,
                         timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    report = json.loads(out.read_text()) if out.exists() else {}
    return res.returncode, report, res.stdout + res.stderr


def classic_fields_present(report: dict[str, Any]) -> None:
    for key in ("total_requests", "successful", "failed", "success_rate", "total_duration_sec",
                "requests_per_sec", "duration_ms", "server_distribution",
                "repo_distribution", "errors"):
        assert key in report, key
    assert set(report["duration_ms"]) == {"min", "max", "mean", "median", "p95", "p99"}


@pytest.mark.parametrize("via", ["prefix", "proxy"])
def test_protocol_mode_all_valid(via: str, proxy: GobletProxy, prefix_port: int,
                                 upstream: UpstreamServer, repos: Repos,
                                 tmp_path: Path) -> None:
    names = [repos.create(commits=6) for _ in range(2)]
    url = f"http://127.0.0.1:{prefix_port}" if via == "prefix" else proxy.url
    code, report, output = loadtest(
        tmp_path, "--via", via, "--url", url, "--ca", str(proxy.ca_cert), "--workers", "4",
        "--requests", "30", "--think-time", "0", "--duration", "30",
        "--repos", *(f"{upstream.host}/{n}" for n in names))
    assert code == 0, output
    classic_fields_present(report)
    assert report["success_rate"] == 100 and report["failed"] == 0
    assert report["total_requests"] == 120 and report["stopped_by"] == "requests"
    assert {k: v["requests"] for k, v in report["by_kind"].items()} == \
        {"info_refs": 40, "ls_refs": 40, "fetch": 40}
    assert report["server_distribution"] == {INSTANCE: 120}
    assert set(report["repo_distribution"]) == {f"{upstream.host}/{n}" for n in names}
    assert "success rate: 100.00%" in output
    cached = re.findall(r"git fetch \S+ .* outcome=cache ", proxy.log_text())
    assert len(cached) >= 38, "the fetches were not answered from the cache"


@pytest.mark.parametrize(("via", "op"), [("prefix", "clone"), ("proxy", "fetch")])
def test_clone_mode_all_valid(via: str, op: str, proxy: GobletProxy, prefix_port: int,
                              upstream: UpstreamServer, repos: Repos, tmp_path: Path) -> None:
    name = repos.create(public=False, readers=("alice",), commits=6)
    url = f"http://127.0.0.1:{prefix_port}" if via == "prefix" else proxy.url
    auth_file = tmp_path / "tenants"
    auth_file.write_text("# tenant credentials\nalice:alice-pw\n")
    code, report, output = loadtest(
        tmp_path, "--mode", "clone", "--git-op", op, "--via", via, "--url", url,
        "--ca", str(proxy.ca_cert), "--auth", f"@{auth_file}", "--workers", "3",
        "--requests", "3", "--think-time", "0", "--duration", "40",
        "--repos", f"{upstream.host}/{name}")
    assert code == 0, output
    classic_fields_present(report)
    assert report["success_rate"] == 100 and report["total_requests"] == 9
    expected = {"clone": 9} if op == "clone" else {"clone": 3, "fetch": 6}
    assert {k: v["requests"] for k, v in report["by_kind"].items()} == expected
    assert report["server_distribution"] == {INSTANCE: 9}
    assert "alice-pw" not in output + json.dumps(report)


def test_failures_are_reported_not_counted_as_successes(
    proxy: GobletProxy, prefix_port: int, upstream: UpstreamServer, repos: Repos,
    tmp_path: Path,
) -> None:
    name = repos.create(commits=3)
    dead = free_port()
    code, report, _ = loadtest(tmp_path, "--url", f"http://127.0.0.1:{dead}", "--workers", "2",
                               "--requests", "3", "--repos", f"{upstream.host}/{name}")
    assert code == 1
    assert report["failed"] == report["total_requests"] == 6 and report["success_rate"] == 0
    assert any("ConnectionRefused" in e for e in report["errors"])
    code, report, _ = loadtest(tmp_path, "--mode", "clone", "--url",
                               f"http://127.0.0.1:{dead}", "--workers", "1", "--requests",
                               "2", "--repos", f"{upstream.host}/{name}")
    assert code == 1 and report["failed"] == 2
    assert any(e.startswith("git clone: fatal:") for e in report["errors"])
    code, report, _ = loadtest(tmp_path, "--url", f"http://127.0.0.1:{prefix_port}",
                               "--workers", "1", "--requests", "3",
                               "--repos", f"{upstream.host}/no-such-repo.git")
    assert code == 1 and report["failed"] == 3
    assert any("info_refs: HTTP 4" in e for e in report["errors"])


def test_a_git_err_answer_is_a_failure(
    proxy: GobletProxy, prefix_port: int, upstream: UpstreamServer, repos: Repos,
    tmp_path: Path,
) -> None:
    """A fill that fails upstream makes goblet answer HTTP 200 with an ERR pkt-line (a
    repo goblet has, so the fetch waits for a fill instead of streaming from upstream)."""
    name = repos.create(commits=3)
    code, _, output = loadtest(tmp_path, "--url", f"http://127.0.0.1:{prefix_port}",
                               "--workers", "1", "--requests", "3", "--think-time", "0",
                               "--repos", f"{upstream.host}/{name}")
    assert code == 0, output
    settle(proxy.cache_dir)
    add_commit(repos.path(name), message="moved")  # the next fetch needs a fill
    upstream.fault("error500", kinds=["fetch"])
    try:
        code, report, _ = loadtest(tmp_path, "--url", f"http://127.0.0.1:{prefix_port}",
                                   "--workers", "1", "--requests", "3", "--think-time", "0",
                                   "--repos", f"{upstream.host}/{name}")
    finally:
        upstream.fault("none")
    assert code == 1
    assert report["by_kind"]["fetch"] == {**report["by_kind"]["fetch"], "failed": 1}
    (error,) = report["errors"]
    assert error.startswith("fetch: server sent a git error: goblet: upstream"), error


def test_loops_stop_at_the_duration_bound(prefix_port: int, upstream: UpstreamServer,
                                          repos: Repos, tmp_path: Path) -> None:
    name = repos.create(commits=3)
    started = time.monotonic()
    code, report, output = loadtest(
        tmp_path, "--url", f"http://127.0.0.1:{prefix_port}", "--workers", "2",
        "--requests", "1000000", "--think-time", "50", "--duration", "2",
        "--repos", f"{upstream.host}/{name}")
    assert time.monotonic() - started < 15
    assert code == 0, output
    assert report["stopped_by"] == "duration" and 0 < report["total_requests"] < 1000
    assert report["total_duration_sec"] < 5


# -- the k6 script, run by node against stub k6 modules ----------------------------------

K6_STUBS = {
    "package.json": '{"name": "k6", "type": "module", "exports": {".": "./index.js", '
                    '"./http": "./http.js", "./metrics": "./metrics.js", '
                    '"./crypto": "./crypto.js", "./encoding": "./encoding.js"}}',
    "index.js": "export function check(value, sets) {\n"
                "  for (const [name, fn] of Object.entries(sets)) "
                "globalThis.__checks.push([name, Boolean(fn(value))]);\n  return true;\n}\n"
                "export function sleep() {}\n",
    "http.js": "function answer(method, url, body, params) {\n"
               "  globalThis.__requests.push({ method, url, body, headers: params.headers });\n"
               "  const kind = url.endsWith('/healthz') ? 'healthz' : url.includes('/info/refs')"
               " ? 'info_refs' : body.includes('command=ls-refs') ? 'ls_refs' : 'fetch';\n"
               "  const a = globalThis.__answers[kind];\n"
               "  const b = Buffer.from(a.body, 'base64');\n"
               "  return { status: a.status, url, headers: a.headers,\n"
               "           body: b.buffer.slice(b.byteOffset, b.byteOffset + b.length) };\n}\n"
               "export default {\n  get: (url, params = {}) => answer('GET', url, '', params),\n"
               "  post: (url, body, params = {}) => answer('POST', url, body, params),\n};\n",
    "metrics.js": "class Metric {\n  constructor(name) { this.name = name; }\n"
                  "  add(value, tags) { globalThis.__metrics.push([this.name, value, tags]); }\n"
                  "}\nexport class Counter extends Metric {}\n"
                  "export class Rate extends Metric {}\n",
    "crypto.js": "import { createHash } from 'node:crypto';\n"
                 "export default { sha1: (data, enc) => "
                 "createHash('sha1').update(Buffer.from(data)).digest(enc) };\n",
    "encoding.js": "export default { b64encode: (s) => Buffer.from(s).toString('base64') };\n",
}
K6_RUNNER = """import { readFileSync } from 'node:fs';
const fixture = JSON.parse(readFileSync(process.argv[2], 'utf8'));
Object.assign(globalThis, { __ENV: fixture.env, __VU: 1, __ITER: 0,
  __answers: fixture.answers, __requests: [], __checks: [], __metrics: [] });
const script = await import('./k6-script.js');
script.setup();
script.default();
console.log(JSON.stringify({ options: script.options, requests: globalThis.__requests,
  checks: globalThis.__checks, metrics: globalThis.__metrics }));
"""


def record_answers(port: int, repo: str) -> tuple[dict[str, Any], str]:
    """Real goblet answers to the three v2 requests (and /healthz), base64 bodies."""
    answers: dict[str, Any] = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    tip = ""
    for kind in ("healthz", "info_refs", "ls_refs", "fetch"):
        headers = {"Git-Protocol": "version=2"}
        if kind == "healthz":
            conn.request("GET", "/healthz")
        elif kind == "info_refs":
            conn.request("GET", f"/{repo}/info/refs?service=git-upload-pack", headers=headers)
        else:
            body = protocol.ls_refs_request() if kind == "ls_refs" else \
                protocol.fetch_request([tip])
            conn.request("POST", f"/{repo}/git-upload-pack", body=body, headers={
                **headers, "Content-Type": "application/x-git-upload-pack-request"})
        resp = conn.getresponse()
        data = resp.read()
        if kind == "ls_refs":
            tip = protocol.check_ls_refs(data).tip()
        answers[kind] = {"status": resp.status, "headers": dict(resp.getheaders()),
                         "body": base64.b64encode(data).decode()}
    conn.close()
    return answers, tip


def k6_workdir(work: Path) -> Path:
    """``work`` holding k6-script.js, its pkt-line module and stub k6 modules, for node."""
    stubs = work / "node_modules" / "k6"
    stubs.mkdir(parents=True, exist_ok=True)
    for name, text in K6_STUBS.items():
        (stubs / name).write_text(text)
    (work / "package.json").write_text('{"type": "module"}')
    for name in ("k6-script.js", "k6-pktline.js"):
        shutil.copy(LOADTEST / name, work / name)
    return work


def run_k6(node: str, tmp_path: Path, env: dict[str, str], answers: dict[str, Any]
           ) -> dict[str, Any]:
    """Import k6-script.js under node with stub k6 modules; run setup() and one iteration."""
    work = k6_workdir(tmp_path / "k6")
    (work / "run.js").write_text(K6_RUNNER)
    fixture = work / "fixture.json"
    fixture.write_text(json.dumps({"env": env, "answers": answers}))
    res = subprocess.run([node, "run.js", str(fixture)], cwd=work, capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    result: dict[str, Any] = json.loads(res.stdout.splitlines()[-1])
    return result


def k6_import(node: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Import k6-script.js (module scope only) under node with stub k6 modules."""
    run_k6_setup = k6_workdir(tmp_path / "k6-import")
    (run_k6_setup / "run.js").write_text(
        f"globalThis.__ENV = {json.dumps(env)};\n"
        "const script = await import('./k6-script.js');\n"
        "console.log(JSON.stringify(script.options.stages.length));\n")
    return subprocess.run([node, "run.js"], cwd=run_k6_setup, capture_output=True, text=True,
                          timeout=60, check=False)


def test_k6_loads_the_demo_upstream_unless_told_otherwise(tmp_path: Path) -> None:
    node = tool("node", "nodejs")
    default = k6_import(node, tmp_path, {})
    assert default.returncode == 0 and "loading" not in default.stderr, default.stderr
    refused = k6_import(node, tmp_path, {"REPOS": "127.0.0.1:8443/a.git,github.com/git/git"})
    assert refused.returncode != 0
    assert "REPOS names github.com, not this machine" in refused.stderr
    assert "ALLOW_REMOTE_UPSTREAM=1" in refused.stderr
    allowed = k6_import(node, tmp_path, {"REPOS": "github.com/git/git",
                                         "ALLOW_REMOTE_UPSTREAM": "1"})
    assert allowed.returncode == 0 and "loading github.com" in allowed.stderr, allowed.stderr


def test_k6_script_speaks_valid_git_and_fails_on_err(
    proxy: GobletProxy, prefix_port: int, upstream: UpstreamServer, repos: Repos,
    tmp_path: Path,
) -> None:
    node = tool("node", "nodejs")
    name = repos.create(commits=5)
    repo = f"{upstream.host}/{name}"
    answers, tip = record_answers(prefix_port, repo)
    assert tip == list_refs(repos.path(name))["refs/heads/main"]
    base = f"http://127.0.0.1:{prefix_port}"
    env = {"GOBLET_URL": base + "/", "REPOS": f"https://{repo}", "AUTH": "alice:alice-pw"}
    result = run_k6(node, tmp_path, env, answers)
    options = result["options"]
    assert [(s["duration"], s["target"]) for s in options["stages"]] == K6_STAGES
    assert options["thresholds"]["http_req_failed"] == ["rate<0.01"]
    assert options["thresholds"]["git_valid"] == ["rate>0.99"]
    healthz, *git = result["requests"]
    assert healthz["url"] == f"{base}/healthz"
    assert [(r["method"], r["url"]) for r in git] == [
        ("GET", f"{base}/{repo}/info/refs?service=git-upload-pack"),
        ("POST", f"{base}/{repo}/git-upload-pack"),
        ("POST", f"{base}/{repo}/git-upload-pack")]
    assert git[1]["body"].encode() == protocol.ls_refs_request()
    assert git[2]["body"].encode() == protocol.fetch_request([tip])
    assert all(r["headers"]["Authorization"] == "Basic " + base64.b64encode(
        b"alice:alice-pw").decode() for r in git)
    assert result["checks"] == [["info_refs: valid git answer", True],
                                ["ls_refs: valid git answer", True],
                                ["fetch: valid git answer", True]]

    err = protocol.pkt_line("ERR goblet: upstream answered 500")
    broken = {**answers, "fetch": {**answers["fetch"], "body": base64.b64encode(err).decode()}}
    result = run_k6(node, tmp_path, {**env, "DEPTH": "2"}, broken)
    assert result["checks"][-1] == ["fetch: valid git answer", False]
    assert ["git_errors", 1, {"kind": "fetch"}] in result["metrics"]
    assert result["requests"][-1]["body"].encode() == protocol.fetch_request([tip], depth=2)
    truncated = base64.b64decode(answers["fetch"]["body"])[:-30]
    cut = {**answers, "fetch": {**answers["fetch"],
                                "body": base64.b64encode(truncated).decode()}}
    assert run_k6(node, tmp_path, env, cut)["checks"][-1] == ["fetch: valid git answer", False]


def test_the_kits_wire_the_fleet_tier_without_a_credential_in_argv() -> None:
    services = compose()["services"]
    assert {"redis", "minio", "minio-init"} <= set(services)
    for n in (1, 2, 3):
        goblet = services[f"goblet-{n}"]
        assert "--set=goblet_store=s3://goblet/fleet" in goblet["command"]
        assert "--set=goblet_store_endpoint=http://minio:9000" in goblet["command"]
        assert "--set=goblet_redis=redis://redis:6379/0" in goblet["command"]
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(goblet["environment"])
        assert not any("SECRET" in arg or "PASSWORD" in arg for arg in goblet["command"])
    assert "MC_HOST_store" in services["minio-init"]["environment"]
    assert "ports" not in services["redis"] and "ports" not in services["minio"]
    (deployment,) = manifest()["Deployment"]
    (sidecar,) = deployment["spec"]["template"]["spec"]["initContainers"]
    script = sidecar["args"][0]
    for option in ("goblet_store=$GOBLET_STORE", "goblet_store_endpoint=$GOBLET_STORE_ENDPOINT",
                   "goblet_redis=$GOBLET_REDIS"):
        assert option in script
    names = {e["name"] for e in sidecar["env"]}
    assert {"GOBLET_STORE", "GOBLET_STORE_ENDPOINT", "GOBLET_REDIS"} <= names
    assert not names & {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"}  # a role, or a Secret
