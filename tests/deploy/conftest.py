"""Fixtures of the deployment tests: the Compose model of every profile set, the rendered kustomizations and the
`twofold` commands they run (helpers in tests/deploy/manifests.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.manifests import (
    KUSTOMIZATIONS,
    PROFILES,
    Command,
    compose_commands,
    compose_config,
    k8s_commands,
    kustomize,
)


@pytest.fixture(scope="session")
def compose_models() -> dict[tuple[str, ...], dict[str, Any]]:
    """The Compose model for every profile set of :data:`PROFILES`."""
    return {profiles: compose_config(*profiles) for profiles in PROFILES}


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every kustomization's rendered manifests, by name (base, gpu)."""
    return {name: kustomize(path) for name, path in KUSTOMIZATIONS.items()}


@pytest.fixture(scope="session")
def commands(
    compose_models: dict[tuple[str, ...], dict[str, Any]], rendered: dict[str, list[dict[str, Any]]]
) -> list[Command]:
    """Every `twofold` command the Compose file (all profiles) and the manifests (base and gpu) run."""
    found = {c for model in compose_models.values() for c in compose_commands(model)}
    found |= {c for label, docs in rendered.items() for c in k8s_commands(docs, label)}
    return sorted(found, key=lambda c: c.where)
