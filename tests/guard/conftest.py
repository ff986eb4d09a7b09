"""Fixtures for the guard tests: one real MiniLM embedder per session, a private embedding cache."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("OPENSEASON_CACHE", str(tmp_path_factory.mktemp("guard-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def embedder():
    from openseason.guard.embeddings import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def support_rails(embedder):
    from openseason.guard import Rails, RailsConfig, ScriptedClient, example_config

    return Rails(RailsConfig.from_path(example_config("support")), llm=ScriptedClient(), embedder=embedder)


@pytest.fixture
def make_rails(embedder):
    """Rails from Colang and YAML strings, sharing the session's embedder."""
    from openseason.guard import Rails, RailsConfig

    def make(colang_text: str, yaml_text: str = "", llm=None, **kwargs):
        return Rails(RailsConfig.from_content(colang_text, yaml_text), llm=llm, embedder=embedder, **kwargs)

    return make
