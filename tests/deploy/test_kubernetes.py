"""deploy/k8s, rendered by kubectl's kustomize (base and the gpu overlay): every manifest is valid against the
Kubernetes schemas (kubernetes-validate, strict), and the objects fit together: selectors, probes, ports,
references, the one scheduler, GPUs, non-root pods with requests and limits, and no real secret committed."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.manifests import DOCKERFILE, containers, find, image_name, k8s_commands, option, pod_spec
from twofold.store.settings import Settings
from twofold.store.stages import Queue

#: The oldest Kubernetes release still common in managed clusters, and the newest the schemas ship.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
Docs = list[dict[str, Any]]


def _pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = doc["spec"]["template"]["metadata"]["labels"]
    return labels


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_manifest_is_valid_against_the_kubernetes_schemas(
    rendered: dict[str, Docs], version: str
) -> None:
    for label, docs in rendered.items():
        assert docs, label
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{label} {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {exc}")


def test_the_schema_check_catches_a_misspelt_field(rendered: dict[str, Docs]) -> None:
    bad = copy.deepcopy(find(rendered["base"], "Deployment", "twofold-api"))
    bad["spec"]["replica"] = bad["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_the_overlay_is_the_base_plus_a_namespace_and_the_teacher_cache(rendered: dict[str, Docs]) -> None:
    def names(docs: Docs) -> set[tuple[str, str]]:
        return {(d["kind"], d["metadata"]["name"]) for d in docs}

    assert names(rendered["gpu"]) == names(rendered["base"]) | {
        ("Namespace", "twofold"),
        ("PersistentVolumeClaim", "teacher-cache"),
    }
    for doc in rendered["gpu"]:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "twofold", doc["metadata"]["name"]


def test_pods_run_as_the_image_user_read_only_with_requests_and_limits(rendered: dict[str, Docs]) -> None:
    (uid,) = set(re.findall(r"^USER (\d+):", DOCKERFILE.read_text(), re.M))
    for label, docs in rendered.items():
        for doc in docs:
            spec = pod_spec(doc)
            if spec is None:
                continue
            where = f"{label} {doc['metadata']['name']}"
            ctx = spec["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == int(uid), where
            assert spec["automountServiceAccountToken"] is False, where
            for c in containers(doc):
                sec = c["securityContext"]
                assert sec["allowPrivilegeEscalation"] is False and sec["capabilities"]["drop"] == ["ALL"]
                assert sec["readOnlyRootFilesystem"] is True, (where, c["name"])
                assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, (where, c["name"])
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][kind]), (where, c["name"], kind)
                name, tag = c["image"], c["image"].rsplit(":", 1)[-1]
                assert ":" in name and tag != "latest", (where, name)


def test_references_resolve(rendered: dict[str, Docs]) -> None:
    for label, docs in rendered.items():
        present = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for doc in docs:
            spec = pod_spec(doc)
            if spec is None:
                continue
            for volume in spec.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim) in present, (label, claim)
            if "serviceAccountName" in spec:
                assert ("ServiceAccount", spec["serviceAccountName"]) in present
            for c in containers(doc):
                mounts = {m["name"] for m in c.get("volumeMounts", [])}
                assert mounts <= {v["name"] for v in spec.get("volumes", [])}, (label, c["name"])
                for source in c.get("envFrom", []):
                    for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                        if key in source:
                            assert (kind, source[key]["name"]) in present, (label, source)
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref and (("Secret", ref["name"]) not in present):
                        assert ref["optional"] is True, (label, env["name"])


def test_services_and_the_pdb_select_their_pods(rendered: dict[str, Docs]) -> None:
    for label, docs in rendered.items():
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        for svc in [d for d in docs if d["kind"] == "Service"]:
            (target,) = [d for d in deployments if _matches(svc["spec"]["selector"], _pod_labels(d))]
            (container,) = [c for c in containers(target, init=False) if "ports" in c]
            for port in svc["spec"]["ports"]:
                assert _named_port(container, port["targetPort"]), (label, svc["metadata"]["name"])
        pdb = find(docs, "PodDisruptionBudget", "twofold-api")
        api = find(docs, "Deployment", "twofold-api")
        selected = [
            d for d in deployments if _matches(pdb["spec"]["selector"]["matchLabels"], _pod_labels(d))
        ]
        assert selected == [api]
        assert 0 < pdb["spec"]["minAvailable"] < api["spec"]["replicas"], "a drain must be able to proceed"


def test_api_probes_use_healthz_and_readyz_on_the_served_port(rendered: dict[str, Docs]) -> None:
    for docs in rendered.values():
        (c,) = containers(find(docs, "Deployment", "twofold-api"), init=False)
        assert c["args"][0] == "serve"
        port = int(option(tuple(c["args"]), "--port") or 0)
        paths = {}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert _named_port(c, get["port"]) == port, probe
            paths[probe] = get["path"]
        assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}


def test_one_worker_deployment_per_queue_and_one_scheduler(rendered: dict[str, Docs]) -> None:
    for label, docs in rendered.items():
        by_queue: dict[str, list[str]] = {}
        beat = []
        for cmd in k8s_commands(docs, label):
            if cmd.argv[0] != "worker":
                continue
            for q in (option(cmd.argv, "--queues") or "").split(","):
                by_queue.setdefault(q, []).append(cmd.where)
            if "--beat" in cmd.argv:
                beat.append(cmd.where)
        assert set(by_queue) == set(Queue.__members__), by_queue
        assert all(len(v) == 1 for v in by_queue.values()), by_queue
        assert beat == [f"k8s/{label}:Deployment/twofold-scheduler/twofold"], beat
        scheduler = find(docs, "Deployment", "twofold-scheduler")
        # one replica, and never two during an update: the sweeper's schedule must not run twice
        assert scheduler["spec"]["replicas"] == 1 and scheduler["spec"]["strategy"] == {"type": "Recreate"}
        assert option(_args(scheduler), "--queues") == "default"


def _args(doc: dict[str, Any]) -> tuple[str, ...]:
    (c,) = containers(doc, init=False)
    return tuple(c["args"])


def test_migration_job_and_schema_wait(rendered: dict[str, Docs]) -> None:
    for docs in rendered.values():
        assert _args(find(docs, "Job", "twofold-migrate")) == ("db", "upgrade")
        for doc in docs:
            if doc["kind"] == "Deployment" and _pod_labels(doc)["app.kubernetes.io/name"] == "twofold":
                (init,) = doc["spec"]["template"]["spec"]["initContainers"]
                assert init["args"] == ["db", "check"], doc["metadata"]["name"]
                (main,) = containers(doc, init=False)
                assert image_name(init["image"]) == image_name(main["image"]), "one image per pod"


def test_config_and_secret_hold_real_settings_and_no_real_secret(rendered: dict[str, Docs]) -> None:
    fields = set(Settings.model_fields)
    for docs in rendered.values():
        config = find(docs, "ConfigMap", "twofold-config")["data"]
        secret = find(docs, "Secret", "twofold-secrets")["stringData"]
        # other programs' variables may join them (AWS_*, MLFLOW_*); a TWOFOLD_* one must be a setting
        for key in [k for k in {**config, **secret} if k.startswith("TWOFOLD_")]:
            assert key.removeprefix("TWOFOLD_").lower() in fields, key
        assert {"TWOFOLD_DATABASE_URL", "TWOFOLD_BROKER_URL"} <= set(secret)
        assert all("CHANGE-ME" in value for value in secret.values()), "placeholders only"
        assert not (set(config) & set(secret)), "one source per setting"
        # the presets' teacher is the teacher Service, on its port
        url = config["TWOFOLD_TEACHER_BASE_URL"]
        match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)/v1", url)
        assert match, url
        host, port = match.groups()
        svc = find(docs, "Service", host)
        assert int(port) in {p["port"] for p in svc["spec"]["ports"]}


def test_the_shared_volume_is_mounted_where_the_settings_point(rendered: dict[str, Docs]) -> None:
    for label, docs in rendered.items():
        config = find(docs, "ConfigMap", "twofold-config")["data"]
        claim = find(docs, "PersistentVolumeClaim", "twofold-data")
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "workers on different nodes share it"
        for doc in docs:
            if doc["kind"] != "Deployment" or _pod_labels(doc)["app.kubernetes.io/name"] != "twofold":
                continue
            (c,) = containers(doc, init=False)
            volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
            data = [m for m in c["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
            assert [m["mountPath"] for m in data] == ["/var/lib/twofold"], (label, doc["metadata"]["name"])
            for key in (
                "TWOFOLD_WORK_DIR",
                "TWOFOLD_ARTIFACTS_URL",
                "TWOFOLD_DATA_DIR",
                "TWOFOLD_MODELS_DIR",
            ):
                assert config[key].startswith("/var/lib/twofold/"), key


def test_gpu_overlay_puts_the_gpu_queue_and_the_teacher_on_gpus(rendered: dict[str, Docs]) -> None:
    docs = rendered["gpu"]
    for name in ("twofold-worker-gpu", "teacher"):
        doc = find(docs, "Deployment", name)
        spec = doc["spec"]["template"]["spec"]
        (c,) = containers(doc, init=False)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1", name
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        shm = [v for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert [m["mountPath"] for m in c["volumeMounts"] if m["name"] == shm[0]["name"]] == ["/dev/shm"]
    worker = find(docs, "Deployment", "twofold-worker-gpu")
    (c,) = containers(worker, init=False)
    assert image_name(c["image"]) == "twofold-gpu"
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, "an update needs no spare GPU"
    teacher = find(docs, "Deployment", "teacher")
    (c,) = containers(teacher, init=False)
    assert c["command"] == ["vllm", "serve"] and c["args"][0] == "Qwen/Qwen2.5-7B-Instruct"
    port = int(option(tuple(c["args"]), "--port") or 0)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert (
            c[probe]["httpGet"]["path"] == "/health" and _named_port(c, c[probe]["httpGet"]["port"]) == port
        )
    assert teacher["spec"]["strategy"] == {"type": "Recreate"}
    assert find(docs, "ConfigMap", "twofold-config")["data"]["TWOFOLD_TEACHER_MODEL"] == c["args"][0]
    # the base runs the gpu queue on the CPU image, with no GPU asked for
    base_worker = find(rendered["base"], "Deployment", "twofold-worker-gpu")
    (c,) = containers(base_worker, init=False)
    assert image_name(c["image"]) == "twofold" and "nvidia.com/gpu" not in c["resources"]["limits"]
