"""`swell deploy kubernetes`: every generated object checked against the Kubernetes schemas
(kubernetes-validate, pinned version, strict: unknown fields fail) and the RayCluster against
KubeRay's CRD schema, plus the properties that matter (probes, drain, groups, GPU counts) and what
Ray's own KubeRay autoscaler reads from the worker groups."""

from __future__ import annotations

import functools
import math
import os
import stat
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from swell.core.config import demo_config, parse_config
from swell.core.errors import ConfigError
from swell.deploy import kubernetes as k8s
from swell.deploy.cli import app

K8S_VERSION = "1.31.0"  # kubernetes-validate carries 1.25 to 1.37 offline; KubeRay 1.5 supports 1.31
SHARED_CRD = Path(__file__).resolve().parents[2].parent / "shared" / "k8s" / "ray.io_rayclusters.yaml"
CRD = Path(os.environ.get("SWELL_RAYCLUSTER_CRD") or SHARED_CRD)  # ../shared beside the checkout
SECRETS = k8s.Secrets(api_key="k" * 43, webhook_secret="w" * 43, ray_token="t" * 43, redis_password="p" * 43)

MULTI = {
    "datasets": {
        "sd15": {"source": "s3://models/sd15", "endpoint": "http://minio.storage:9000"},
        "loras": {"source": "s3://models/loras"},
        "qwen": {"source": "https://example.org/qwen/"},
    },
    "cluster": {"kind": "local", "results_url": "s3://results/swell"},
    "services": [
        {  # half an A10G each, on Spot nodes: two per GPU
            "name": "sd",
            "engine": "diffusers",
            "options": {"dataset": "sd15", "lora_dataset": "loras"},
            "replicas": {"min": 1, "max": 4},
            "resources": {"gpus": 0.5, "cpus": 2, "memory": "12Gi", "gpu_kind": "a10g", "spot": True},
        },
        {  # a quarter of an A10G, never on Spot
            "name": "upscale",
            "engine": "callable",
            "options": {"function": "json:dumps"},
            "replicas": {"min": 0, "max": 3},
            "resources": {"gpus": 0.25, "cpus": 1, "gpu_kind": "a10g"},
        },
        {  # two whole A100s per replica
            "name": "llm",
            "engine": "transformers",
            "options": {"dataset": "qwen"},
            "replicas": {"min": 1, "max": 2},
            "resources": {
                "gpus": 2,
                "cpus": 8,
                "memory": "64Gi",
                "gpu_kind": "a100",
                "custom": {"nvlink": 1},
            },
        },
        {
            "name": "embed",
            "engine": "embeddings",
            "options": {"model": "all-MiniLM-L6-v2"},
            "replicas": {"min": 1, "max": 6},
            "resources": {"cpus": 3, "memory": "2Gi"},
        },
    ],
}


def multi() -> Any:
    return parse_config(MULTI)


def objects(files: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [obj for objs in files.values() for obj in objs]


def find(files: dict[str, list[dict[str, Any]]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects(files) if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def groups(files: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in find(files, "RayCluster")["spec"]["workerGroupSpecs"]}


def crd_schema() -> dict[str, Any]:
    if not CRD.is_file():
        pytest.skip(f"KubeRay's CRD is not at {CRD} (set SWELL_RAYCLUSTER_CRD)")
    return _crd_schema()


@functools.cache
def _crd_schema() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 900 kB of YAML
    crd = yaml.load(CRD.read_text(), Loader=loader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return dict(v1["schema"]["openAPIV3Schema"])


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the CRD's structural schema does not declare: the API server prunes them silently
    (or refuses them under strict field validation), so a typo would vanish without this."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict) and "properties" in schema:
        found = [f"{path}.{k}" for k in value if k not in schema["properties"]]
        for k, v in value.items():
            if k in schema["properties"]:
                found += unknown_fields(v, schema["properties"][k], f"{path}.{k}")
        return found
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return [
            x
            for k, v in value.items()
            for x in unknown_fields(v, schema["additionalProperties"], f"{path}.{k}")
        ]
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [x for i, v in enumerate(value) for x in unknown_fields(v, schema["items"], f"{path}[{i}]")]
    return []


CASES = {
    "demo": lambda: k8s.manifests(demo_config(), k8s.DeployOptions(), SECRETS),
    "multi": lambda: k8s.manifests(multi(), k8s.DeployOptions(kind_values={"a10g": "NVIDIA-A10G"}), SECRETS),
    "multi-4gpu-nodes": lambda: k8s.manifests(
        multi(), k8s.DeployOptions(gpus_per_node={"a10g": 4, "a100": 8}, cache_volume="hostpath"), SECRETS
    ),
    "external-redis": lambda: k8s.manifests(
        multi(),
        k8s.DeployOptions(redis_url="rediss://:pw@redis.example.org:6380/2", namespace="prod"),
        SECRETS,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_kubernetes_object_passes_the_strict_schema(case: str) -> None:
    checked = 0
    for obj in objects(CASES[case]()):
        if obj["apiVersion"] == "ray.io/v1":
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_raycluster_passes_kuberays_crd_schema(case: str) -> None:
    schema = crd_schema()
    cluster = find(CASES[case](), "RayCluster")
    jsonschema.validate(cluster, schema)
    assert unknown_fields(cluster, schema) == []
    # its pod templates are Kubernetes PodTemplateSpecs: check them against the strict core schema
    templates = [cluster["spec"]["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    for template in templates:
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_the_checks_catch_a_bad_object() -> None:
    """The validators above are not vacuous: a misspelt field and a wrong type fail them."""
    files = CASES["multi"]()
    deployment = find(files, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    cluster = find(files, "RayCluster")
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, crd_schema())
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 3
    cluster["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    assert unknown_fields(cluster, crd_schema()) == [".spec.workerGroupSpecs[0].minReplica"]


def test_gateway_probes_service_and_secrets() -> None:
    files = CASES["multi"]()
    pod = find(files, "Deployment")["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["command"][:2] == ["swell", "up"] and gateway["securityContext"]["readOnlyRootFilesystem"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in gateway["env"]}
    for name in ("SWELL_QUEUE_URL", "SWELL_API_KEY", "SWELL_WEBHOOK_SECRET", "RAY_AUTH_TOKEN"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] == "swell-secrets"
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert gateway["envFrom"] == [{"secretRef": {"name": "swell-data", "optional": True}}], "S3 results"
    assert find(files, "Deployment")["spec"]["replicas"] == 1  # one brain
    service = find(files, "Service", "swell-gateway")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    text = "".join(
        k8s.render(multi(), k8s.DeployOptions(), SECRETS)[f] for f in ("gateway.yaml", "config.yaml")
    )
    for secret in (SECRETS.api_key, SECRETS.webhook_secret, SECRETS.ray_token, SECRETS.redis_password):
        assert secret not in text


def test_the_config_map_runs_the_ray_backend_at_the_head_service() -> None:
    files = CASES["multi"]()
    text = find(files, "ConfigMap")["data"]["swell.yaml"]
    deployed = parse_config(yaml.safe_load(text))
    assert deployed.cluster.kind == "ray"
    assert deployed.cluster.address == "ray://swell-head-svc.swell.svc.cluster.local:10001"
    assert deployed.cluster.results_url == "s3://results/swell"
    advertised = {name: ray_resources(g) for name, g in groups(files).items()}
    for service in deployed.services:
        asked = {k for k in service.resources.custom if k.startswith(k8s.GROUP_PREFIX)}
        hosts = [name for name, res in advertised.items() if asked <= set(res)]
        assert hosts == [k8s.group_name(service)], service.name  # exactly one group can take it
        if service.resources.gpu_kind:  # what swell.cluster.ray asks for is advertised there too
            assert advertised[hosts[0]][f"swell_gpu_{service.resources.gpu_kind}"] > 0


def ray_resources(group: dict[str, Any]) -> dict[str, Any]:
    import json

    return dict(json.loads(group["rayStartParams"]["resources"][1:-1]))


def test_one_worker_group_per_gpu_kind_and_spot() -> None:
    files = CASES["multi"]()
    assert sorted(groups(files)) == ["a100", "a10g", "a10g-spot", "cpu"]
    demo = groups(CASES["demo"]())
    assert sorted(demo) == ["cpu"]


def test_gpu_counts_and_autoscaling_bounds() -> None:
    one = groups(CASES["multi"]())
    spot = one["a10g-spot"]  # 4 x 0.5 on 1-GPU nodes: two per node
    assert (spot["minReplicas"], spot["maxReplicas"]) == (1, 2)
    assert limits(spot)["nvidia.com/gpu"] == "1" and spot["rayStartParams"]["num-gpus"] == "1"
    upscale = one["a10g"]  # 3 x 0.25 packs on one GPU; min 0 replicas: no pod needed
    assert (upscale["minReplicas"], upscale["maxReplicas"]) == (0, 1)
    llm = one["a100"]  # 2 whole GPUs a replica
    assert (llm["minReplicas"], llm["maxReplicas"]) == (1, 2) and limits(llm)["nvidia.com/gpu"] == "2"
    assert ray_resources(llm)["nvlink"] == 1
    assert "nvidia.com/gpu" not in limits(one["cpu"]) and "num-gpus" not in one["cpu"]["rayStartParams"]
    assert (one["cpu"]["minReplicas"], one["cpu"]["maxReplicas"]) == (
        1,
        3,
    )  # 6 x 3 CPUs on 8-CPU pods: two a pod
    four = groups(CASES["multi-4gpu-nodes"]())
    spot4 = four["a10g-spot"]  # 4 x 0.5 on one 4-GPU node use two GPUs: the pod asks for two
    assert (spot4["minReplicas"], spot4["maxReplicas"]) == (1, 1)
    assert limits(spot4)["nvidia.com/gpu"] == "2" and spot4["rayStartParams"]["num-gpus"] == "2"
    assert limits(four["a100"])["nvidia.com/gpu"] == "4"  # two 2-GPU replicas on one 8-GPU node
    for group in [*one.values(), *four.values()]:
        container = group["template"]["spec"]["containers"][0]
        requests = container["resources"]["requests"]
        assert requests.get("nvidia.com/gpu") == limits(group).get("nvidia.com/gpu")  # extended: equal
        assert float(requests["cpu"]) >= int(group["rayStartParams"]["num-cpus"]) + 1


def limits(group: dict[str, Any]) -> dict[str, str]:
    return dict(group["template"]["spec"]["containers"][0]["resources"]["limits"])


def test_spot_tolerations_node_selectors_and_gpu_taints() -> None:
    one = groups(CASES["multi"]())
    spot = one["a10g-spot"]["template"]["spec"]
    assert spot["nodeSelector"] == {"swell.dev/gpu-kind": "NVIDIA-A10G"}
    keys = {t["key"] for t in spot["tolerations"]}
    assert {"nvidia.com/gpu", "cloud.google.com/gke-spot", "kubernetes.azure.com/scalesetpriority"} <= keys
    assert "preferredDuringSchedulingIgnoredDuringExecution" in spot["affinity"]["nodeAffinity"]
    on_demand = one["a10g"]["template"]["spec"]
    assert {t["key"] for t in on_demand["tolerations"]} == {"nvidia.com/gpu"}
    terms = on_demand["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {e["operator"] for e in terms["nodeSelectorTerms"][0]["matchExpressions"]} == {"NotIn"}
    assert (
        "nodeSelector" not in one["cpu"]["template"]["spec"]
        and "tolerations" not in one["cpu"]["template"]["spec"]
    )


def test_drain_hook_and_grace_period() -> None:
    options = k8s.DeployOptions(drain_seconds=90)
    for group in groups(k8s.manifests(multi(), options, SECRETS)).values():
        spec = group["template"]["spec"]
        hook = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert hook[:3] == ["python", "-m", "swell.deploy.drain"]
        timeout = float(hook[hook.index("--timeout") + 1])
        assert 90 <= timeout < spec["terminationGracePeriodSeconds"]  # the hook ends before the kill
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["SWELL_DRAIN_SECONDS"] == "90" and env["SWELL_RAY_GCS_ADDRESS"].endswith(":6379")


def test_preload_init_containers_make_a_new_node_warm() -> None:
    one = groups(CASES["multi"]())
    spot = one["a10g-spot"]
    init = spot["template"]["spec"]["initContainers"]
    assert [c["command"][:4] for c in init] == [["swell", "data", "preload", n] for n in ("loras", "sd15")]
    assert all(c["volumeMounts"][0] == {"name": "cache", "mountPath": "/data"} for c in init)
    warm = {k for k in ray_resources(spot) if k.startswith(k8s.WARM_PREFIX)}
    assert warm == {"swell_warm_loras", "swell_warm_sd15"}
    assert "initContainers" not in one["a10g"]["template"]["spec"]  # nothing to preload
    worker = spot["template"]["spec"]["containers"][0]
    assert {"name": "cache", "mountPath": "/data"} in worker["volumeMounts"]
    volumes = {v["name"]: v for v in spot["template"]["spec"]["volumes"]}
    assert volumes["cache"] == {"name": "cache", "emptyDir": {"sizeLimit": "100Gi"}}
    hostpath = groups(CASES["multi-4gpu-nodes"]())["a10g-spot"]["template"]["spec"]
    assert hostpath["initContainers"][0]["name"] == "cache-owner"
    assert {v["name"]: v for v in hostpath["volumes"]}["cache"]["hostPath"]["path"] == "/var/lib/swell"


def test_kuberays_autoscaler_reads_the_worker_groups() -> None:
    """Ray's own KubeRay autoscaler config reader (a private module of the installed ray) sees
    the resources the groups advertise: whole CPUs, GPUs, memory and custom resources."""
    autoscaling = pytest.importorskip("ray.autoscaler._private.kuberay.autoscaling_config")
    cluster = find(CASES["multi"](), "RayCluster")
    config = autoscaling._derive_autoscaling_config_from_ray_cr(cluster)
    types = config["available_node_types"]
    assert types["a10g-spot"]["resources"]["GPU"] == 1 and types["a10g-spot"]["max_workers"] == 2
    assert types["a10g-spot"]["resources"]["swell_group_a10g_spot"] == k8s.ADVERTISED
    assert types["a100"]["resources"]["GPU"] == 2 and types["a100"]["resources"]["nvlink"] == 1
    assert types["cpu"]["resources"]["CPU"] == 6 and types["cpu"]["min_workers"] == 1
    for name, node in types.items():
        if name != "headgroup" and "GPU" in node["resources"]:
            packed = cluster_gpu_need(name)
            assert node["resources"]["GPU"] == math.ceil(packed)


def cluster_gpu_need(group: str) -> float:
    """The GPU shares of the replicas one full pod packs, added up (multi, 1-GPU a10g nodes)."""
    return {"a10g-spot": 1.0, "a10g": 0.75, "a100": 2.0}[group]


def test_external_redis_writes_no_redis_objects() -> None:
    files = CASES["external-redis"]()
    assert "redis.yaml" not in files
    kinds = {o["kind"] for o in objects(files)}
    assert "StatefulSet" not in kinds
    (secret,) = [o for o in objects(files) if o["kind"] == "Secret"]
    assert secret["stringData"]["queue-url"] == "rediss://:pw@redis.example.org:6380/2"
    assert all(o["metadata"].get("namespace") in ("prod", None) for o in objects(files))
    redis = find(CASES["demo"](), "StatefulSet")
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "requirepass" not in str(redis)  # the password is in the Secret's redis.conf only


def test_refuses_what_cannot_run_on_a_cluster() -> None:
    raw = {
        **MULTI,
        "datasets": {
            **cast(dict, MULTI["datasets"]),
            "sd15": {"source": "s3://m/sd", "secret_access_key": "x"},
        },
    }
    with pytest.raises(ConfigError, match=r"datasets\.sd15\.secret_access_key"):
        k8s.manifests(parse_config(raw), k8s.DeployOptions(), SECRETS)
    with pytest.raises(ConfigError, match="--gpus-per-node"):
        k8s.manifests(multi(), k8s.DeployOptions(gpus_per_node={"a100": 1}), SECRETS)
    with pytest.raises(ConfigError, match="--redis-url"):
        k8s.manifests(multi(), k8s.DeployOptions(redis_url="http://x"), SECRETS)


def test_rendering_is_deterministic() -> None:
    first = k8s.render(multi(), k8s.DeployOptions(), SECRETS)
    assert first == k8s.render(multi(), k8s.DeployOptions(), SECRETS)
    assert "&id" not in "".join(first.values())  # no YAML anchors or aliases


def test_cli_writes_files_keeps_secrets_and_never_prints_them(tmp_path: Path) -> None:
    config = tmp_path / "swell.yaml"
    config.write_text(yaml.safe_dump(MULTI))
    out = tmp_path / "k8s"
    args = ["kubernetes", "--config", str(config), "--out", str(out), "--image", "registry.example/swell:1"]
    runner = CliRunner()
    env = {"SWELL_API_KEY": "", "SWELL_WEBHOOK_SECRET": "", "SWELL_RAY_AUTH_TOKEN": ""}
    first = runner.invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.yaml",
        "gateway.yaml",
        "namespace.yaml",
        "raycluster.yaml",
        "redis.yaml",
        "secrets.yaml",
    ]
    assert stat.S_IMODE((out / "secrets.yaml").stat().st_mode) == 0o600
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    values = k8s.read_secrets((out / "secrets.yaml").read_text(), k8s.DeployOptions())
    assert len(values) == 4 and all(len(v) >= 32 for v in values.values())
    assert not any(v in first.output for v in values.values())
    second = runner.invoke(app, args, env=env)
    assert second.exit_code == 0, second.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same inputs, same bytes
    given = runner.invoke(app, args, env={**env, "SWELL_API_KEY": "from-the-environment-123"})
    assert given.exit_code == 0 and "from-the-environment-123" not in given.output
    assert k8s.read_secrets((out / "secrets.yaml").read_text(), k8s.DeployOptions())["api_key"] == (
        "from-the-environment-123"
    )
    for path in out.glob("*.yaml"):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj["apiVersion"] != "ray.io/v1":
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_cli_errors_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "swell.yaml"
    config.write_text(yaml.safe_dump(MULTI))
    runner = CliRunner()
    bad = runner.invoke(
        app, ["kubernetes", "-c", str(config), "-o", str(tmp_path / "o"), "--gpus-per-node", "a10g"]
    )
    assert bad.exit_code == 1 and "--gpus-per-node" in bad.output
    bad = runner.invoke(
        app, ["kubernetes", "-c", str(config), "-o", str(tmp_path / "o"), "--namespace", "Prod"]
    )
    assert bad.exit_code == 1 and "--namespace" in bad.output
    assert not (tmp_path / "o").exists()


def test_the_documented_time_slicing_config_map_is_valid() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md"
    blocks = docs.read_text().split("```yaml\n")[1:]
    (config_map,) = [yaml.safe_load(b.split("```")[0]) for b in blocks if "timeSlicing" in b]
    kubernetes_validate.validate(config_map, K8S_VERSION, strict=True)
    plugin = yaml.safe_load(config_map["data"]["any"])
    assert plugin["sharing"]["timeSlicing"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 4}]
