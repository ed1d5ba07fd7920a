"""Settings as the command line makes them, checked without the machine's own NEXA_* variables."""

from __future__ import annotations

import pytest

from nexa.cli import build_parser, settings_from_args
from nexa.config import Settings, env_name


@pytest.fixture(autouse=True)
def no_nexa_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own NEXA_* settings must not leak into these checks (import it to use it)."""
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)


def parse(*argv: str) -> Settings:
    """`nexa server ARGV...`'s settings."""
    return settings_from_args(build_parser().parse_args(["server", *argv]))
