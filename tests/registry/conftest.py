"""Fixtures: one real registry world per test session (read-only), clones for tests that move aliases."""

from __future__ import annotations

import pytest

from tests.registry.world import World, build_world, clone_world


@pytest.fixture(scope="package")
def world(tmp_path_factory) -> World:
    """Shared by every registry test module: never move aliases on it (use `fresh_world`)."""
    return build_world(tmp_path_factory.mktemp("registry"))


@pytest.fixture
def fresh_world(world, tmp_path) -> World:
    """A private copy of `world` (release 1 champion, release 2 challenger) that a test may mutate."""
    return clone_world(world, tmp_path / "clone")
