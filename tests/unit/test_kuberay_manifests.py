"""infra/kuberay (RayCluster, RayJob, build config, image) and infra/ray/cluster.yaml, checked offline.

NOT a validation against KubeRay's CRD schema: no package installable here ships it (codeflare-sdk vendors
KubeRay's python client, which builds plain dicts and calls the API server, with no schema or models; Ray's
wheel has only KubeRay's autoscaler glue). What is checked instead:

* the CRD's structural rules (KubeRay 1.7, ray.io/v1): apiVersion and kinds, the fields it requires, the field
  names it knows at the levels written here (a typo would be pruned by the API server), rayStartParams values
  as strings, a name and an image for every container;
* the RayCluster spec as Ray itself reads it: ``ray.autoscaler._private.kuberay.autoscaling_config`` (what
  KubeRay's autoscaler sidecar runs), whose result Ray validates against its ray-schema.json: each group's
  CPUs, GPUs and memory;
* the job: runtimeEnvYAML as a Ray RuntimeEnv with the quiet env, the entrypoint as a ``wit build`` command
  line, build.yaml as a BuildConfig whose training job asks for the gpu group's GPUs;
* infra/ray/cluster.yaml the way ``ray up`` checks it before it connects anywhere (prepare_config, then
  validate_config against Ray's ray-schema.json), and no dashboard on 0.0.0.0 without a comment saying why.
"""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.core.env import QUIET_ENV

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "infra" / "kuberay"

# Field names of the ray.io/v1 CRDs of KubeRay 1.7.0 (ray-operator/config/crd/bases), at the levels used here.
CLUSTER_SPEC_FIELDS = {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                       "headGroupSpec", "headServiceAnnotations", "historyServerOptions", "managedBy",
                       "networkPolicy", "rayVersion", "suspend", "tlsOptions", "upgradeStrategy", "workerGroupSpecs"}
HEAD_FIELDS = {"enableIngress", "headService", "ingressOptions", "labels", "rayStartParams", "resources",
               "serviceType", "template"}
WORKER_FIELDS = {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts", "priority",
                 "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template"}
JOB_SPEC_FIELDS = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
                   "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
                   "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
                   "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((KUBERAY / name).read_text())


@pytest.fixture(scope="module")
def raycluster() -> dict[str, Any]:
    return load("raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return load("rayjob.yaml")


@pytest.fixture(scope="module", params=["raycluster", "rayjob"])
def cluster_spec(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The RayCluster's spec, and the RayJob's rayClusterSpec (the same type in the CRD)."""
    doc = load(f"{request.param}.yaml")
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def groups(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first one


def ray_version_locked() -> str:
    pins = dict(line.split("==", 1) for line in (REPO / "requirements.lock").read_text().split() if "==" in line)
    return pins["ray"]


# ---- structure (the CRD's rules, not its schema)

def test_kinds_and_names(raycluster: dict[str, Any], rayjob: dict[str, Any]) -> None:
    assert (raycluster["apiVersion"], raycluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    for doc in (raycluster, rayjob):
        assert DNS_LABEL.match(doc["metadata"]["name"]), doc["metadata"]["name"]
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}


def test_cluster_spec_structure(cluster_spec: dict[str, Any]) -> None:
    assert set(cluster_spec) <= CLUSTER_SPEC_FIELDS
    assert set(cluster_spec["headGroupSpec"]) <= HEAD_FIELDS and "template" in cluster_spec["headGroupSpec"]
    names = [g["groupName"] for g in cluster_spec["workerGroupSpecs"]]
    assert names == ["cpu", "gpu"]
    for group in cluster_spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_FIELDS
        assert {"groupName", "minReplicas", "maxReplicas", "template"} <= set(group)
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    for name, group in groups(cluster_spec).items():
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), (name, params)  # the CRD: map of strings
        assert "dashboard-host" not in params or name == "head"
        for container in group["template"]["spec"]["containers"]:
            assert DNS_LABEL.match(container["name"]) and container["image"], (name, container)


def test_image_and_ray_version(cluster_spec: dict[str, Any]) -> None:
    """One image everywhere, with the Ray of requirements.lock, built by the Dockerfile with `make setup`."""
    images = {c["image"] for g in groups(cluster_spec).values() for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1
    assert cluster_spec["rayVersion"] == ray_version_locked()
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    assert "make setup" in dockerfile and "requirements.lock" in dockerfile
    for package in ("pipeline", "dedup", "training", "flows"):  # pyproject's packages (installed editable)
        assert f"COPY {package} {package}" in dockerfile


def test_quiet_env_in_every_container(cluster_spec: dict[str, Any]) -> None:
    for name, group in groups(cluster_spec).items():
        env = {e["name"]: e["value"] for e in ray_container(group)["env"]}
        assert QUIET_ENV.items() <= env.items(), name


def test_token_auth_and_autoscaling(cluster_spec: dict[str, Any]) -> None:
    assert cluster_spec["authOptions"] == {"mode": "token"}
    assert cluster_spec["enableInTreeAutoscaling"] is True  # the gpu group starts at 0 pods


# ---- the groups as Ray reads them

def ray_node_types(spec: dict[str, Any]) -> dict[str, Any]:
    """The autoscaling config KubeRay's autoscaler derives from this spec, validated by Ray (ray-schema.json)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    ray_cr = {"metadata": {"name": "wit-builder", "namespace": "default"}, "spec": copy.deepcopy(spec)}
    return _derive_autoscaling_config_from_ray_cr(ray_cr)["available_node_types"]


def test_groups_as_ray_reads_them(cluster_spec: dict[str, Any]) -> None:
    types = ray_node_types(cluster_spec)
    assert set(types) == {"headgroup", "cpu", "gpu"}
    assert types["headgroup"]["resources"]["CPU"] == 0  # no Ray tasks on the head; the driver runs there
    assert "GPU" not in types["headgroup"]["resources"] and "GPU" not in types["cpu"]["resources"]
    assert types["cpu"]["resources"]["CPU"] >= 1 and types["cpu"]["min_workers"] >= 1
    assert types["gpu"]["resources"]["GPU"] >= 1 and types["gpu"]["min_workers"] == 0
    assert types["gpu"]["max_workers"] == 1  # a training Ray job runs on one node


def test_gpu_group_requests_nvidia_gpus(cluster_spec: dict[str, Any]) -> None:
    gpu = ray_container(groups(cluster_spec)["gpu"])["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"]
    for name in ("head", "cpu"):
        resources = ray_container(groups(cluster_spec)[name])["resources"]
        assert not any("gpu" in key for part in resources.values() for key in part), name


# ---- the dashboard

def comment_above(text: str, needle: str) -> str:
    """The comment lines right above the first line containing ``needle``."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if needle in line)
    comment = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("#"):
            break
        comment.append(line)
    return "\n".join(reversed(comment))


def test_dashboard_host(raycluster: dict[str, Any], rayjob: dict[str, Any]) -> None:
    """The RayCluster keeps the job server on the head's loopback; the RayJob needs it on the head Service
    (the operator polls the job there) and says so right above the setting."""
    assert raycluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    why = comment_above((KUBERAY / "rayjob.yaml").read_text(), 'dashboard-host: "0.0.0.0"')
    assert "head Service" in why and "token" in why


def test_rayjob_cluster_is_the_raycluster(raycluster: dict[str, Any], rayjob: dict[str, Any]) -> None:
    """One cluster design: the RayJob's rayClusterSpec is raycluster.yaml's spec but for the dashboard host."""
    specs = [copy.deepcopy(raycluster["spec"]), copy.deepcopy(rayjob["spec"]["rayClusterSpec"])]
    for spec in specs:
        del spec["headGroupSpec"]["rayStartParams"]["dashboard-host"]
    assert specs[0] == specs[1]


# ---- the job

def test_rayjob_fields(rayjob: dict[str, Any]) -> None:
    spec = rayjob["spec"]
    assert set(spec) <= JOB_SPEC_FIELDS
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 0


def test_runtime_env_is_quiet(rayjob: dict[str, Any]) -> None:
    from ray.runtime_env import RuntimeEnv

    runtime_env = RuntimeEnv(**yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"]))
    assert QUIET_ENV.items() <= runtime_env["env_vars"].items()
    assert "working_dir" not in runtime_env and "pip" not in runtime_env  # the image has the project


def test_entrypoint_is_wit_build(rayjob: dict[str, Any]) -> None:
    from flows.cli import make_parser, parse_args

    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[0] == "wit"
    args = parse_args(make_parser(), argv[1:])
    assert args.command == "build"
    assert args.config.startswith("s3://") and args.config.endswith("/build.yaml")


def test_build_config(raycluster: dict[str, Any], tmp_path: Path) -> None:
    """build.yaml is a BuildConfig (its eval folder replaced by one that exists here) whose build directory is
    on object storage, whose eval sets are on the head's volume, whose data stages use the job's RAY_ADDRESS,
    and whose training job asks Ray for as many GPUs as a gpu-group pod has."""
    from flows.config import build_config
    from training.launch import ray_job_gpus

    cfg = build_config({"eval_sets": {"imagenet-val": str(tmp_path)}}, str(KUBERAY / "build.yaml"))
    assert cfg.build_dir.startswith("s3://") and cfg.remote
    head_mounts = {m["name"]: m for m in ray_container(groups(raycluster["spec"])["head"])["volumeMounts"]}
    assert load("build.yaml")["eval_sets"]["imagenet-val"].startswith(head_mounts["eval-sets"]["mountPath"] + "/")
    assert head_mounts["eval-sets"]["readOnly"] is True
    assert cfg.crawl.ray_address is None and cfg.download.ray_address is None
    assert not cfg.filter.ray_address and not cfg.balance.ray_address
    assert cfg.train.ray_address == "http://127.0.0.1:8265" and cfg.train.nnodes == 1
    assert ray_job_gpus(cfg.train) == ray_node_types(raycluster["spec"])["gpu"]["resources"]["GPU"]
    assert {"crawl", "download", "train"} <= set(cfg.stages)


def test_no_volume_is_shared_between_pods(cluster_spec: dict[str, Any]) -> None:
    """Every pod stages on its own emptyDir (WIT_SCRATCH) and gets the store's credentials; the only claim is
    the eval sets', on the head."""
    for name, group in groups(cluster_spec).items():
        container = ray_container(group)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["WIT_SCRATCH"] == mounts["scratch"] and "emptyDir" in volumes["scratch"], name
        assert {"secretRef": {"name": "wit-s3", "optional": True}} in container["envFrom"], name
        claims = {n for n, v in volumes.items() if "persistentVolumeClaim" in v}
        assert claims == ({"eval-sets"} if name == "head" else set()), name


# ---- infra/ray/cluster.yaml (ray up)

def test_ray_up_config_validates_and_keeps_dashboard_local() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = REPO / "infra" / "ray" / "cluster.yaml"
    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)  # Ray's ray-schema.json, as `ray up` does after prepare_config
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "0.0.0.0" not in commands and "dashboard-host" not in commands  # Ray's default: 127.0.0.1
    assert all(c.startswith("~/wit-builder/.venv/bin/ray ") for c in config["head_start_ray_commands"])
