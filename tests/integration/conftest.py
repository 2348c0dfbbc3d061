"""Integration tests run models whose specs hash PII: they need a (test-only) key."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def pii_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDAUDIT_PII_KEY", "integration-test-key-0123456789")
