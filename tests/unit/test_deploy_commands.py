"""The documented deploy commands are the tested ones (templates/deploy_commands.sh).

Each gcloud block runs through the installed Cloud SDK with a fresh, credential-less config: it
must get past argument parsing (and, for ``builds submit`` / ``flex-template build``, past
reading templates/cloudbuild.yaml / templates/metadata.json) and stop at credentials. The job's
parameters pass the template's regexes and the pipeline's own checks, and ``predaudit run
--runner DataflowRunner --dry_run=True`` constructs the job (no Google project involved).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMANDS = ROOT / "templates" / "deploy_commands.sh"
ENV = {
    "PROJECT": "my-project",
    "REGION": "europe-west1",
    "BUCKET": "my-bucket",
    "TAG": "3f2c1ab",
    "CLICKHOUSE_HOST": "ch.example.com",
    "JOB_ID": "2026-01-01_00_00_00-1234567890",
    "RENAMES": "Write=WriteAudit",
}
AUTH = re.compile(r"You do not currently have an active account selected|credentials|gcloud auth login")
PARSE = re.compile(
    r"unrecognized arguments|Bad syntax|invalid choice|argument --?[\w-]+:|must be specified|"
    r"interpreting .* as build config|Invalid template metadata|Unable to parse|Invalid value for"
)


def blocks() -> tuple[str, list[str]]:
    """(the variable prelude, each gcloud command), as the file lays them out."""
    prelude, commands = [], []
    for block in COMMANDS.read_text().split("\n\n"):
        lines = [ln for ln in block.splitlines() if not ln.startswith("#")]
        (commands if lines and lines[0].startswith("gcloud ") else prelude).append("\n".join(lines))
    return "\n".join(prelude), commands


def gcloud_env(tmp_path: pathlib.Path) -> dict[str, str]:
    cfg = tmp_path / "gcloud-config"
    cfg.mkdir(exist_ok=True)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {
        **keep,
        **ENV,
        "CLOUDSDK_CONFIG": str(cfg),  # no account, no credentials
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
        "CLOUDSDK_METRICS_ENVIRONMENT": "predaudit-test",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
    }


# Runs gcloud command lines in ONE gcloud process (the SDK loads its CLI once: about 1.5 s per
# command less on a loaded box), each with its own stderr, under the SDK's own Python.
GCLOUD_BATCH = """
import contextlib, io, json, os, sys
lib = os.path.join(sys.argv[1], "lib")
sys.path[:0] = [os.path.join(lib, "third_party"), lib]
import gcloud
gcloud._fix_google_module()
from googlecloudsdk import gcloud_main
from googlecloudsdk.core import log
cli = gcloud_main.CreateCLI([])
out = []
for argv in json.load(sys.stdin):
    err, code = io.StringIO(), 0
    log.Reset(io.StringIO(), err)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.Execute(argv[1:])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            code = 1
            err.write(f"{type(exc).__name__}: {exc}")
    out.append({"code": code, "stderr": err.getvalue()})
print(json.dumps(out))
"""


def argvs(prelude: str, commands: list[str], env: dict[str, str]) -> list[list[str]]:
    """Each command's argv after bash's expansion (``gcloud`` is a function that prints it)."""
    script = "set -u\n" + prelude + '\ngcloud() { printf "%s\\0" gcloud "$@"; printf "\\n"; }\n'
    script += "\n".join(commands)
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return [line.rstrip("\0").split("\0") for line in r.stdout.split("\0\n") if line]


def run_gcloud(argv_list: list[list[str]], env: dict[str, str]) -> list[dict]:
    root = pathlib.Path(shutil.which("gcloud") or "gcloud").resolve().parents[1]
    bundled = root / "platform" / "bundledpythonunix" / "bin" / "python3"
    python = env.get("CLOUDSDK_PYTHON") or (str(bundled) if bundled.is_file() else "python3")
    r = subprocess.run(
        [python, "-c", GCLOUD_BATCH, str(root)],
        cwd=ROOT, env=env, input=json.dumps(argv_list), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_documented_gcloud_command_parses(tmp_path) -> None:
    # the Cloud SDK is preinstalled on this project's machine kind: without it this test fails, not skips
    assert shutil.which("gcloud"), "gcloud not found: install the Google Cloud SDK"
    prelude, commands = blocks()
    assert [c.split()[:3] for c in commands] == [
        ["gcloud", "builds", "submit"],
        ["gcloud", "dataflow", "flex-template"],
        ["gcloud", "dataflow", "flex-template"],
        ["gcloud", "dataflow", "flex-template"],
        ["gcloud", "dataflow", "jobs"],
        ["gcloud", "dataflow", "jobs"],
    ]
    # the two commands the README documented before (issue 12): the classifier must call them
    # parse errors, or a passing result below would prove nothing
    old = [
        'gcloud builds submit --tag "x:1" -f templates/Dockerfile .',
        "gcloud dataflow flex-template run j --region r --template-file-gcs-location gs://b/t.json "
        "--parameters sinks=bigquery,clickhouse,bq_project=p",
    ]
    env = gcloud_env(tmp_path)
    lines = argvs(prelude, commands + old, env)
    assert len(lines) == len(commands) + len(old)
    results = run_gcloud(lines, env)
    for argv, r in zip(lines[: len(commands)], results, strict=False):
        assert r["code"] != 0, argv
        assert not PARSE.search(r["stderr"]), f"{argv}\n{r['stderr']}"
        assert AUTH.search(r["stderr"]), f"did not reach the credentials check:\n{argv}\n{r['stderr']}"
    for r in results[len(commands) :]:
        assert r["code"] != 0 and PARSE.search(r["stderr"]), r["stderr"]


def documented_parameters(tmp_path: pathlib.Path) -> dict[str, str]:
    prelude, _ = blocks()
    r = subprocess.run(
        ["bash", "-c", f'set -u\n{prelude}\nprintf %s "$PARAMS"'],
        cwd=ROOT,
        env=gcloud_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    value = r.stdout
    assert value.startswith("^~^"), "values with commas need gcloud's ^~^ delimiter syntax"
    return dict(item.split("=", 1) for item in value[3:].split("~"))


def test_documented_parameters_pass_the_template_and_the_pipeline(tmp_path) -> None:
    from pipelines.options import AuditOptions, validate

    params = documented_parameters(tmp_path)
    meta = {
        p["name"]: p for p in json.loads((ROOT / "templates" / "metadata.json").read_text())["parameters"]
    }
    assert (
        params.pop("sdk_container_image") == "europe-west1-docker.pkg.dev/my-project/predaudit/worker:3f2c1ab"
    )
    assert set(params) <= set(meta), set(params) - set(meta)
    assert {n for n, p in meta.items() if not p["isOptional"]} <= set(params)
    for name, value in params.items():
        assert all(re.match(rx, value) for rx in meta[name].get("regexes", [])), (name, value)
    opts = AuditOptions([f"--{k}={v}" for k, v in params.items()])
    assert validate(opts, "streaming") == ["bigquery", "clickhouse"]


def test_cloudbuild_builds_the_three_images_from_these_dockerfiles() -> None:
    import yaml

    build = yaml.safe_load((ROOT / "templates" / "cloudbuild.yaml").read_text())
    files = [a.split("=", 1)[1] for s in build["steps"] for a in s["args"] if a.startswith("--file=")]
    assert files == ["templates/worker.Dockerfile", "templates/Dockerfile", "templates/sidecar.Dockerfile"]
    assert all((ROOT / f).is_file() for f in files)
    assert [i.rsplit("/", 1)[1] for i in build["images"]] == [
        "worker:${_TAG}",
        "launcher:${_TAG}",
        "sidecar:${_TAG}",
    ]


def test_readme_quotes_the_tested_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    _, commands = blocks()
    for command in commands:
        assert command in readme, f"README.md does not quote templates/deploy_commands.sh:\n{command}"


def test_dataflow_runner_dry_run_constructs_the_job(bq_emulator, bq_client, monkeypatch, tmp_path) -> None:
    """``predaudit run --runner DataflowRunner --dry_run=True`` with the documented parameters
    (BigQuery on the emulator, where its start-up table check runs) builds the whole job."""
    import apache_beam as beam

    from pipelines.cli import main
    from tests.conftest import BQ_PROJECT

    dataset = f"dry_{uuid.uuid4().hex[:8]}"
    bq = [
        "--sinks",
        "bigquery",
        "--bq_project",
        BQ_PROJECT,
        "--bq_dataset",
        dataset,
        "--bq_endpoint",
        bq_emulator.endpoint,
    ]
    out = io.StringIO()
    assert main(["provision", "--project", BQ_PROJECT, "--pubsub", "off", *bq], out) == 0, out.getvalue()

    params = documented_parameters(tmp_path)
    for name in ("sinks", "bq_project", "bq_dataset", "clickhouse_dsn", "model_specs", "references"):
        params.pop(name)
    jobs = []
    real_run = beam.Pipeline.run

    def spy(self, *args, **kwargs):
        result = real_run(self, *args, **kwargs)
        jobs.append(result.job)
        return result

    monkeypatch.setattr(beam.Pipeline, "run", spy)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud-account"))
    monkeypatch.delenv("PREDAUDIT_PII_KEY", raising=False)  # the workers read --pii_key_secret
    argv = [
        "run", "--runner", "DataflowRunner", "--dry_run=True", "--project", "my-project",
        "--region", "europe-west1", "--temp_location", "gs://my-bucket/temp",
        "--model_specs", str(ROOT / "schemas" / "models"),
        *(f"--{k}={v}" for k, v in params.items()),
        "--sinks=bigquery", f"--bq_project={BQ_PROJECT}", f"--bq_dataset={dataset}",
        f"--bq_endpoint={bq_emulator.endpoint}",
    ]  # fmt: skip
    assert main(argv, io.StringIO()) == 0
    (job,) = {id(j): j for j in jobs}.values()  # Beam's run() re-enters run() on a copy: one job
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    for step in ("ReadPredictions", "ValidatePredictions", "DedupPredictions", "ReadLabels", "Write"):
        assert step in names, step
    images = [e.payload for e in job.proto_pipeline.components.environments.values()]
    assert any(b"europe-west1-docker.pkg.dev/my-project/predaudit/worker:3f2c1ab" in p for p in images)


FAKE_GCLOUD = """#!/usr/bin/env bash
# records each call; answers `jobs list` with $FAKE_ACTIVE_JOB and `jobs describe` with DRAINED
echo "$*" >> "$FAKE_LOG"
case "$*" in
  "dataflow jobs list "*) [ -n "${FAKE_ACTIVE_JOB:-}" ] && echo "$FAKE_ACTIVE_JOB" ;;
  "dataflow jobs describe "*) echo JOB_STATE_DRAINED ;;
esac
exit 0
"""


@pytest.mark.parametrize(
    ("active", "strategy", "expected"),
    [
        ("", "update", ["flex-template build", "jobs list", "flex-template run"]),
        ("job-1", "update", ["flex-template build", "jobs list", "flex-template run --update"]),
        ("job-1", "replace", ["flex-template build", "jobs list", "jobs drain job-1", "jobs describe job-1", "flex-template run"]),
    ],
)  # fmt: skip
def test_deploy_job_picks_launch_update_or_drain_and_replace(tmp_path, active, strategy, expected) -> None:
    """.github/deploy_job.sh (what deploy.yml runs) against a recording stand-in for gcloud."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**gcloud_env(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_ACTIVE_JOB": active, "STRATEGY": strategy}  # fmt: skip
    r = subprocess.run(["bash", ".github/deploy_job.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == len(expected), calls
    for call, want in zip(calls, expected, strict=True):
        words = want.split()
        assert call.startswith(f"dataflow {words[0]} {words[1]}"), (call, want)
        assert all(w in call.split() for w in words[2:]), (call, want)
    if "--update" in expected[-1]:
        assert "--transform-name-mappings Write=WriteAudit" in calls[-1]
    assert "sdk_container_image=europe-west1-docker.pkg.dev/my-project/predaudit/worker:3f2c1ab" in calls[-1]
