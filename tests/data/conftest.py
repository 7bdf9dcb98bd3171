"""Fixtures of the MFA data tests: a loopback chat-completions server and a synthetic Aff-Wild2 tree."""

from __future__ import annotations

import pytest
from mfa_chat_server import ChatServer
from mfa_fixtures import write_affwild2_tree


@pytest.fixture
def chat_server():
    """A scripted chat-completions server on 127.0.0.1 (random port), stopped after the test."""
    server = ChatServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def affwild2_tree(tmp_path_factory):
    """A 20-video Aff-Wild2 tree in the official layout."""
    return write_affwild2_tree(tmp_path_factory.mktemp("affwild2"))
