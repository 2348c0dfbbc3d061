"""The Flex Template mirrors the pipeline options; Beam is pinned once."""

from __future__ import annotations

import argparse
import json
import pathlib
import re

from pipelines.options import AuditOptions

ROOT = pathlib.Path(__file__).resolve().parents[2]


def declared_options() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    AuditOptions._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def test_metadata_parameters_mirror_the_options() -> None:
    params = {
        p["name"]: p for p in json.loads((ROOT / "templates" / "metadata.json").read_text())["parameters"]
    }
    options = declared_options()
    assert list(params) == list(options)
    for name, action in options.items():
        assert params[name]["helpText"] == action.help, name
        expected_default = None if action.default in ("", None) else str(action.default)
        assert params[name].get("defaultValue") == expected_default, name
    assert params["predictions_subscription"]["isOptional"] is False


def test_beam_is_pinned_once() -> None:
    setup = (ROOT / "setup.py").read_text()
    pins = re.findall(r'BEAM_VERSION = "([0-9.]+)"', setup)
    assert len(pins) == 1
    for path in [ROOT / "templates" / "Dockerfile", ROOT / "Makefile"]:
        assert "apache-beam" not in path.read_text().lower(), f"{path} pins Beam again"
    assert (
        "FLEX_TEMPLATE_PYTHON_SETUP_FILE=/template/setup.py"
        in (ROOT / "templates" / "Dockerfile").read_text()
    )
