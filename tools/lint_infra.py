"""Offline checks of the infrastructure code, run by ``make lint``.

* every ``.github/workflows/*.yml`` against GitHub's workflow JSON schema (check-jsonschema's
  vendored copy: ``--builtin-schema vendor.github-workflows``, no download) and zizmor
  ``--offline`` (pinned actions, minimal permissions, template injection, credentials);
* every ``templates/terraform/*.tf`` parses with python-hcl2, and checkov passes
  (``--skip-download``: no Prisma Cloud calls); each ``#checkov:skip=ID:why`` carries its reason.

Prints one line per problem and exits 1 when there is any, 2 when a tool is missing (the line
says how to install it). checkov pins packages that conflict with the project's (e.g. an old
``packaging``) and ships its own ``hcl2`` module, so it lives in its own virtualenv: ``$CHECKOV``,
else ``.venv/checkov/bin/checkov`` (the Makefile's lint target makes it), else ``checkov`` on PATH.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")


class MissingTool(Exception):
    """A checker is not installed; the message says how to install it."""


def unjustified_skips(text: str, path: str = "x.tf") -> list[str]:
    """Each ``checkov:skip`` without a reason of at least a few words.

    >>> unjustified_skips("#checkov:skip=CKV_GCP_62:access logs go to another project's bucket")
    []
    >>> unjustified_skips("  #checkov:skip=CKV_GCP_80\\n  #checkov:skip=CKV_GCP_81:ok", "b.tf")
    ['b.tf:1: checkov:skip=CKV_GCP_80 has no reason', 'b.tf:2: checkov:skip=CKV_GCP_81 has no reason']
    """
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        m = SKIP.search(line)
        if m and len((m.group(2) or "").split()) < 3:
            out.append(f"{path}:{n}: checkov:skip={m.group(1)} has no reason")
    return out


def _tool(name: str, env: str = "", venv: str = "") -> str:
    for candidate in (os.environ.get(env, "") if env else "", venv and str(ROOT / venv / "bin" / name)):
        if candidate and pathlib.Path(candidate).is_file():
            return candidate
    here = pathlib.Path(sys.executable).with_name(name)
    found = str(here) if here.is_file() else shutil.which(name)
    if not found:
        raise MissingTool(f"{name} not found: pip install it (see the Makefile's lint target)")
    return found


def _run(cmd: list[str], label: str) -> list[str]:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode == 0:
        return []
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    return [f"{label}: {ln}" for ln in lines[-40:]] or [f"{label}: exit {r.returncode}"]


def check_workflows(root: pathlib.Path = ROOT) -> list[str]:
    files = sorted((root / ".github" / "workflows").glob("*.y*ml"))
    if not files:
        return [".github/workflows: no workflow files"]
    rel = [str(f.relative_to(root)) for f in files]
    problems = _run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *rel], "check-jsonschema"
    )
    problems += _run([_tool("zizmor"), "--offline", "--no-progress", ".github/workflows"], "zizmor")
    return problems


def check_terraform(root: pathlib.Path = ROOT) -> list[str]:
    import hcl2

    folder = root / "templates" / "terraform"
    files = sorted(folder.glob("*.tf"))
    if not files:
        return [f"{folder}: no .tf files"]
    problems = []
    for f in files:
        text = f.read_text()
        rel = str(f.relative_to(root))
        try:
            hcl2.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parser error is the finding
            problems.append(f"{rel}: does not parse: {str(exc).splitlines()[0]}")
        problems += unjustified_skips(text, rel)
    cmd = [_tool("checkov", "CHECKOV", ".venv/checkov"), "-d", str(folder.relative_to(root)), "--framework",
           "terraform", "--skip-download", "--quiet", "--compact"]  # fmt: skip
    problems += _run(cmd, "checkov")
    return problems


def main(argv: list[str] | None = None) -> int:
    try:
        problems = check_workflows() + check_terraform()
    except MissingTool as exc:
        print(f"lint_infra: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    if not problems:
        print("lint_infra: workflows (schema, zizmor) and Terraform (hcl2, checkov) clean")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
