"""deploy/compose.yaml, read by Docker Compose's own parser (`docker compose config`: the Compose schema,
interpolation, merges): the services of each profile, start order, health checks, GPUs, the shared volume, and
settings that the service really reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.deploy.manifests import (
    COMPOSE_FILE,
    PROFILES,
    compose_binary,
    compose_commands,
    compose_env,
    image_name,
    option,
    run_tool,
)
from twofold.store.settings import Settings
from twofold.store.stages import Queue

CONTROL_PLANE = {"postgres", "redis", "migrate", "api", "worker-io", "scheduler"}
EXPECTED = {
    (): CONTROL_PLANE,
    ("gpu",): CONTROL_PLANE | {"worker-gpu", "teacher"},
    ("cpu",): CONTROL_PLANE | {"worker-cpu", "teacher-tiny"},
    ("s3",): CONTROL_PLANE | {"minio", "minio-init"},
    ("gpu", "s3"): CONTROL_PLANE | {"worker-gpu", "teacher", "minio", "minio-init"},
}
TWOFOLD_SERVICES = {"migrate", "api", "worker-io", "scheduler", "worker-gpu", "worker-cpu", "teacher-tiny"}
DATA = "/var/lib/twofold"


def _twofold(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in model["services"].items() if n in TWOFOLD_SERVICES}


def test_each_profile_has_the_documented_services(compose_models: dict[tuple[str, ...], Any]) -> None:
    assert set(compose_models) == set(PROFILES) == set(EXPECTED)
    for profiles, model in compose_models.items():
        assert set(model["services"]) == EXPECTED[profiles], profiles


def test_the_parser_rejects_a_missing_password_and_an_unknown_key(tmp_path: Path) -> None:
    # the required variable is enforced (nothing secret has a default) ...
    out = run_tool(
        [compose_binary(), "-f", COMPOSE_FILE, "config", "-q"], env=compose_env(POSTGRES_PASSWORD="")
    )
    assert out.returncode != 0 and "POSTGRES_PASSWORD" in out.stderr
    # ... and the schema is enforced: a misspelt key fails, so a passing file is a checked one
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  api:\n    image: twofold\n    depends_onn: [redis]\n")
    out = run_tool([compose_binary(), "-f", bad, "config", "-q"], env=compose_env())
    assert out.returncode != 0 and "depends_onn" in out.stderr


def test_start_order_waits_for_health_and_for_the_migration(
    compose_models: dict[tuple[str, ...], Any],
) -> None:
    for profiles, model in compose_models.items():
        services = model["services"]
        for name, service in services.items():
            for dep, how in (service.get("depends_on") or {}).items():
                if dep not in services:
                    assert how.get("required") is False, f"{profiles} {name}: needs {dep}, which is off"
                    continue
                target = services[dep]
                if how["condition"] == "service_healthy":
                    check = target.get("healthcheck") or {}
                    assert check.get("test") and not check.get("disable"), f"{name} waits on {dep}'s health"
                elif how["condition"] == "service_completed_successfully":
                    assert target.get("restart", "no") == "no", f"{dep} is one-shot; it must not restart"
        for name, service in _twofold(model).items():
            deps = service.get("depends_on") or {}
            if name == "migrate":
                assert deps["postgres"]["condition"] == "service_healthy"
            elif name != "teacher-tiny":
                assert deps["migrate"]["condition"] == "service_completed_successfully", name
                assert deps["redis"]["condition"] == "service_healthy", name
        assert services["migrate"]["command"] == ["db", "upgrade"]


def test_every_queue_has_a_consumer_and_exactly_one_scheduler(
    compose_models: dict[tuple[str, ...], Any],
) -> None:
    for profiles, model in compose_models.items():
        workers = [c for c in compose_commands(model) if c.argv[0] == "worker"]
        queues = {q for c in workers for q in (option(c.argv, "--queues") or "").split(",")}
        assert queues <= set(Queue.__members__), queues
        wanted = set(Queue.__members__) if {"gpu", "cpu"} & set(profiles) else {"io", "default"}
        assert wanted <= queues, (profiles, queues)
        beat = [c.where for c in workers if "--beat" in c.argv]
        assert beat == ["compose:scheduler"], beat
        assert (model["services"]["scheduler"].get("deploy") or {}).get("replicas", 1) == 1


def test_gpu_services_reserve_different_gpus(compose_models: dict[tuple[str, ...], Any]) -> None:
    services = compose_models[("gpu",)]["services"]
    ids = {}
    for name in ("worker-gpu", "teacher"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        ids[name] = device["device_ids"]
        assert int(services[name]["shm_size"]) >= 1 << 30, f"{name}: PyTorch needs a larger /dev/shm"
    assert ids["worker-gpu"] != ids["teacher"], ids
    assert image_name(services["worker-gpu"]["image"]) == "twofold-gpu"
    assert services["worker-gpu"]["build"]["target"] == "gpu"


def test_teacher_is_vllm_serve_health_checked_on_its_port(compose_models: dict[tuple[str, ...], Any]) -> None:
    services = compose_models[("gpu",)]["services"]
    teacher = services["teacher"]
    assert teacher["entrypoint"] == ["vllm", "serve"]
    assert teacher["command"][0] == "Qwen/Qwen2.5-7B-Instruct"  # the model: vllm serve MODEL
    port = option(tuple(teacher["command"]), "--port")
    assert f"http://127.0.0.1:{port}/health" in " ".join(teacher["healthcheck"]["test"])
    # the services' teacher URL is this service, on this port; in the cpu profile, the tiny teacher's alias
    url = teacher_url(compose_models[("gpu",)])
    assert url == f"http://teacher:{port}/v1"
    tiny = compose_models[("cpu",)]["services"]["teacher-tiny"]
    assert "teacher" in tiny["networks"]["default"]["aliases"]
    assert option(tuple(tiny["command"]), "--port") == port
    assert f"http://127.0.0.1:{port}/health" in " ".join(tiny["healthcheck"]["test"])


def teacher_url(model: dict[str, Any]) -> str:
    """TWOFOLD_TEACHER_BASE_URL as every twofold service gets it (the same for all)."""
    (url,) = {s["environment"]["TWOFOLD_TEACHER_BASE_URL"] for s in _twofold(model).values()}
    return str(url)


def test_services_share_one_data_volume_and_work_dir(compose_models: dict[tuple[str, ...], Any]) -> None:
    model = compose_models[("gpu", "s3")]
    for name, service in _twofold(model).items():
        mounts = {m["target"]: m for m in service.get("volumes", [])}
        assert mounts[DATA]["type"] == "volume" and mounts[DATA]["source"] == "twofold-data", name
        env = service["environment"]
        for key in ("TWOFOLD_WORK_DIR", "TWOFOLD_DATA_DIR", "TWOFOLD_MODELS_DIR"):
            assert env[key].startswith(DATA + "/"), (name, key)
    assert "twofold-data" in model["volumes"]


def test_every_twofold_setting_is_a_real_and_valid_setting(
    compose_models: dict[tuple[str, ...], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for profiles, model in compose_models.items():
        for name, service in _twofold(model).items():
            env = {k: str(v) for k, v in service["environment"].items()}
            keys = {k.removeprefix("TWOFOLD_").lower() for k in env if k.startswith("TWOFOLD_")}
            assert keys <= set(Settings.model_fields), (name, keys - set(Settings.model_fields))
            for k in [k for k in os.environ if k.startswith("TWOFOLD_")]:
                monkeypatch.delenv(k)
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            try:
                settings = Settings()
            except ValidationError as exc:
                pytest.fail(f"{profiles} {name}: {exc}")
            assert settings.broker_url and settings.database_url.startswith("postgresql+psycopg://")
            assert str(settings.local_work_dir) == f"{DATA}/work"
