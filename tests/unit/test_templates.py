"""The Flex Template mirrors the streaming pipeline options; Beam is pinned once.

Google's metadata format (Dataflow v1b3 ``ParameterMetadata``; the installed Cloud SDK parses the
file in tests/unit/test_deploy_commands.py): name, label, helpText, isOptional, defaultValue,
paramType, enumOptions, regexes, ...
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess

import pytest

from pipelines.options import _OPTIONS, _PATH, AuditOptions, OptionsError, validate

ROOT = pathlib.Path(__file__).resolve().parents[2]
METADATA = ROOT / "templates" / "metadata.json"

# Streaming options the template does not expose: emulator endpoints (Google's APIs need none).
HIDDEN = {"bq_endpoint", "bq_write_endpoint"}
# Options whose local default must not reach Dataflow: the operator chooses (chdb:///tmp on a
# worker's disk is lost with the worker, and "clickhouse" alone would pick that chDB).
NO_DEFAULT = {"sinks", "clickhouse_dsn"}
REQUIRED = {"predictions_subscription", "sinks"}
# ParameterMetadata's fields and ParamTypeValueValuesEnum (dataflow v1b3)
FIELDS = {
    "name", "label", "helpText", "isOptional", "defaultValue", "paramType", "enumOptions",
    "regexes", "groupName", "parentName", "parentTriggerValues", "hiddenUi", "customMetadata",
}  # fmt: skip
PARAM_TYPES = {
    "TEXT", "GCS_READ_BUCKET", "GCS_WRITE_BUCKET", "GCS_READ_FILE", "GCS_WRITE_FILE",
    "GCS_READ_FOLDER", "GCS_WRITE_FOLDER", "PUBSUB_TOPIC", "PUBSUB_SUBSCRIPTION", "BIGQUERY_TABLE",
    "JAVASCRIPT_UDF_FILE", "SERVICE_ACCOUNT", "MACHINE_TYPE", "KMS_KEY_NAME", "WORKER_REGION",
    "WORKER_ZONE", "BOOLEAN", "ENUM", "NUMBER",
}  # fmt: skip
# a value per parameter that the regexes must accept and one they must refuse
GOOD_BAD = {
    "predictions_subscription": ("projects/my-project/subscriptions/predictions-audit", "predictions-audit"),
    "labels_subscription": ("projects/my-project/subscriptions/labels-audit", "projects/p/topics/t"),
    "anomaly_topic": ("projects/my-project/topics/anomalies", "projects/my-project/subscriptions/x"),
    "dead_letter_topic": ("projects/my-project/topics/dead-letters", "dead-letters"),
    "dead_letter_payload": ("hash", "raw"),
    "log_format": ("json", "yaml"),
    "sinks": ("bigquery,clickhouse", "bigquery;clickhouse"),
    "bq_project": ("my-project", "My_Project"),
    "bq_dataset": ("audit", "audit-ds"),
    "clickhouse_dsn": ("https://writer@ch.example.com:8443", "chdb:///tmp/predaudit-chdb"),
    "clickhouse_database": ("audit", "audit;drop"),
    "clickhouse_password_secret": ("projects/p/secrets/ch-password/versions/latest", "ch-password"),
    "pii_key_secret": ("projects/p/secrets/pii-key/versions/3", "projects/p/secrets/pii-key"),
    "model_specs": ("gs://my-bucket/specs/", "specs/"),
    "references": ("gs://my-bucket/references", "https://x/refs"),
    "integrity_export": ("gs://my-audit-bucket/integrity/", "/tmp/integrity"),
    "dedup_horizon_s": ("3600.0", "-1"),
    "sink_batch_size": ("5000", "0"),
    "sink_max_attempts": ("6", "six"),
    "sink_failure_max_delay_s": ("60", "1e3x"),
    "monitors": ("off", "maybe"),
    "monitor_window_s": ("300", "0"),
    "monitor_window_period_s": ("0", "-60"),
    "monitor_allowed_lateness_s": ("600", "10m"),
    "timestamp_attribute": ("event_time", "event time"),
}


def streaming_options() -> dict[str, argparse.Action]:
    """The options of ``predaudit run`` (streaming and both), in declaration order."""
    parser = argparse.ArgumentParser()
    AuditOptions._add_argparse_args(parser)
    modes = {flag[2:]: mode for flag, _, mode in _OPTIONS}
    return {
        a.dest: a
        for a in parser._actions
        if a.option_strings and a.dest != "help" and modes[a.dest] != "replay" and a.dest not in HIDDEN
    }


def params() -> dict[str, dict]:
    return {p["name"]: p for p in json.loads(METADATA.read_text())["parameters"]}


def test_metadata_parameters_mirror_the_streaming_options() -> None:
    meta = json.loads(METADATA.read_text())
    assert meta["streaming"] is True
    got, options = params(), streaming_options()
    assert list(got) == list(options), "metadata.json parameters = predaudit run's options, in order"
    for name, action in options.items():
        p = got[name]
        assert set(p) <= FIELDS, (name, set(p) - FIELDS)
        assert p["label"] and p["helpText"] == action.help, name
        assert p["isOptional"] is (name not in REQUIRED), name
        expected = None if action.default in ("", None) or name in NO_DEFAULT else str(action.default)
        assert p.get("defaultValue") == expected, name
        assert p.get("paramType", "TEXT") in PARAM_TYPES, name
        if action.choices:
            assert p["paramType"] == "ENUM" and [o["value"] for o in p["enumOptions"]] == action.choices
            assert p["regexes"] == ["^(" + "|".join(action.choices) + ")$"], name
        if action.type in (int, float):
            assert p["paramType"] == "NUMBER", name


def test_resource_parameters_use_googles_pickers() -> None:
    got = params()
    for name in ("predictions_subscription", "labels_subscription"):
        assert got[name]["paramType"] == "PUBSUB_SUBSCRIPTION"
        assert got[name]["regexes"] == [_PATH["subscription"]]
    for name in ("anomaly_topic", "dead_letter_topic"):
        assert got[name]["paramType"] == "PUBSUB_TOPIC"
        assert got[name]["regexes"] == [_PATH["topic"]]
    assert got["references"]["paramType"] == got["model_specs"]["paramType"] == "GCS_READ_FOLDER"
    assert got["integrity_export"]["paramType"] == "GCS_WRITE_FOLDER"


def test_every_parameter_is_constrained_and_its_regexes_work() -> None:
    """Each parameter has regexes (RE2-compatible: no lookarounds, no backreferences) that accept
    its default and a good value and refuse a bad one."""
    got = params()
    assert set(GOOD_BAD) == set(got), "a new template parameter needs a good and a bad example here"
    for name, p in got.items():
        assert p.get("regexes"), f"{name} has no regexes"
        good, bad = GOOD_BAD[name]
        for rx in p["regexes"]:
            assert rx.startswith("^") and rx.endswith("$"), (name, rx)
            assert not re.search(r"\(\?[=!<]|\\[1-9]", rx), (name, rx)
        accepts = [v for v in (good, p.get("defaultValue")) if v is not None]
        for value in accepts:
            assert all(re.match(rx, value) for rx in p["regexes"]), (name, value)
        assert not all(re.match(rx, bad) for rx in p["regexes"]), (name, bad)


def test_values_the_template_accepts_pass_the_pipelines_checks() -> None:
    """The good examples together are a valid streaming configuration (validate agrees)."""
    argv = [f"--{n}={good}" for n, (good, _) in GOOD_BAD.items() if n not in ("model_specs", "references")]
    opts = AuditOptions(argv)
    assert validate(opts, "streaming") == ["bigquery", "clickhouse"]
    bad = AuditOptions([*argv, "--predictions_subscription=predictions-audit"])
    with pytest.raises(OptionsError):
        validate(bad, "streaming")


def test_beam_is_pinned_once() -> None:
    setup = (ROOT / "setup.py").read_text()
    pins = re.findall(r'BEAM_VERSION = "([0-9.]+)"', setup)
    assert len(pins) == 1
    dockerfiles = sorted((ROOT / "templates").glob("*Dockerfile"))
    assert {p.name for p in dockerfiles} >= {"Dockerfile", "worker.Dockerfile", "sidecar.Dockerfile"}
    for path in [*dockerfiles, ROOT / "Makefile"]:
        assert not re.search(r"apache[-_]beam\s*[=<>~]", path.read_text(), re.I), f"{path} pins Beam again"
    # the worker image is Beam's SDK image of exactly that version (a build argument, no default)
    worker = (ROOT / "templates" / "worker.Dockerfile").read_text()
    assert re.search(r"^ARG BEAM_VERSION$", worker, re.M)
    assert re.search(r"^FROM apache/beam_python3\.11_sdk:\$\{BEAM_VERSION\}$", worker, re.M)
    assert ".[pipeline]" in worker
    # the launcher is the worker image + Google's launcher binary of the same Python; it stages
    # no setup.py (workers get the package from the worker image)
    launcher = (ROOT / "templates" / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{WORKER_IMAGE\}$", launcher, re.M)
    assert "python311-template-launcher-base" in launcher
    assert not re.search(r"^ENV .*FLEX_TEMPLATE_PYTHON_SETUP_FILE", launcher, re.M)
    # the build takes the version from setup.py
    commands = (ROOT / "templates" / "deploy_commands.sh").read_text()
    (line,) = [ln for ln in commands.splitlines() if ln.startswith("BEAM_VERSION=")]
    r = subprocess.run(
        ["bash", "-c", f'{line}\nprintf %s "$BEAM_VERSION"'], cwd=ROOT, capture_output=True, text=True
    )
    assert r.stdout == pins[0], r.stderr
    assert "_BEAM_VERSION=$BEAM_VERSION" in commands


def test_dockerfiles_copy_what_exists_and_the_sidecar_runs_unprivileged() -> None:
    """No Docker daemon here: what can be checked without building (README: only a real build
    verifies the images)."""
    for path in sorted((ROOT / "templates").glob("*Dockerfile")):
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                sources = line.split()[1:-1]
                assert all((ROOT / s).exists() for s in sources), (path.name, line)
    sidecar = (ROOT / "templates" / "sidecar.Dockerfile").read_text()
    assert re.search(r"^USER (?!0\b|root\b)\S+$", sidecar, re.M), "the sidecar image runs as non-root"
    assert '".[sidecar]"' in sidecar and "apache_beam" in sidecar  # installs the extra, asserts no Beam
    from pipelines.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    port = next(a.default for a in sub.choices["sidecar"]._actions if a.dest == "port")
    assert f"EXPOSE {port}" in sidecar and f"127.0.0.1:{port}/readyz" in sidecar
