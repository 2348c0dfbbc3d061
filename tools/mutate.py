"""``make mutate``: mutation testing of the critical modules, each against its fast tests.

Why: a suite is only as good as the bugs it catches. For every module listed under
``[tool.predaudit.mutate]`` in pyproject.toml this copies the working tree into
``build/mutate/<module>/`` (the checkout itself is never touched), lets mutmut (PyPI) plant
one small bug at a time in that module only, and runs the module's own fast tests against
each mutant (only the tests that reach the mutated function, as mutmut measures). It prints
one line per module (mutants, killed, timeout, survived, no tests, equivalent, kill rate)
and writes every survivor's diff to ``build/mutate/survivors.txt`` (and per module to
``build/mutate/<module>/survivors.txt``; ``--report-only`` re-reads the last runs).

Kill rate = (killed + timeout) / (mutants - known equivalents); a mutant no test reaches
("no tests") counts as a survivor. Known-equivalent mutants (a change no test can observe)
are listed with a reason in ``tools/mutate_equivalents.toml``; Beam step labels are treated
as equivalent automatically. Exit 0 when every module reached ``fail_under``, 1 when one did
not or could not be run, 2 for a usage error.

Run: ``make mutate`` or ``make mutate MODULES=transforms/dedup.py`` (several: space- or
comma-separated). ``python tools/mutate.py --list`` shows the modules and their tests.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import fnmatch
import glob
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

try:
    from tomllib import loads as toml_loads
except ModuleNotFoundError:  # Python 3.10: mutmut itself depends on toml there
    from toml import loads as toml_loads  # type: ignore[no-redef]

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutate"
# What a mutant copy needs besides the module: the other packages (unmutated) and the tests.
SOURCE_DIRS = ("schemas", "transforms", "pipelines", "sidecar")
COPY = (*SOURCE_DIRS, "tests", "pyproject.toml", "setup.py", "MANIFEST.in")
# mutmut's exit-code classes (mutmut.stats.status_by_exit_code), folded into our columns.
KILLED, TIMEOUT, SURVIVED, NO_TESTS, NOT_RUN = "killed", "timeout", "survived", "no tests", "not run"
_STATUS = {
    1: KILLED,
    3: KILLED,
    0: SURVIVED,
    5: NO_TESTS,
    33: NO_TESTS,
    None: NOT_RUN,
    34: NOT_RUN,
    2: NOT_RUN,
}
_TIMEOUT_CODES = {36, 24, -24, 152, 255}
# ``rows | "ReadLabel" >> beam.Map(...)``: renaming a Beam step label changes no output.
_BEAM_LABEL = re.compile(r'^(?P<pre>.*?)"(?P<label>[^"]*)"(?P<post>\s*>>.*)$')


@dataclasses.dataclass
class Module:
    """One mutation target: a file (or package directory) and the fast tests that guard it."""

    path: str
    tests: list[str]
    only: list[str] = dataclasses.field(default_factory=list)  # functions, e.g. "Sidecar._ingest"
    isolation: str = "forkserver"  # workers fork from a process that never ran a test (chDB, grpc)

    @property
    def slug(self) -> str:
        """A directory name for the module's work tree.

        >>> Module("transforms/sinks/", []).slug, Module("schemas/specs.py", []).slug
        ('transforms-sinks', 'schemas-specs')
        """
        return self.path.strip("/").removesuffix(".py").replace("/", "-")

    @property
    def files_glob(self) -> str:
        """The files mutmut may mutate (mutmut's ``only_mutate``).

        >>> Module("transforms/sinks/", []).files_glob, Module("schemas/decode.py", []).files_glob
        ('transforms/sinks/*.py', 'schemas/decode.py')
        """
        return self.path.rstrip("/") + "/*.py" if not self.path.endswith(".py") else self.path

    def dotted(self) -> str:
        """The module's import path (a package for a directory).

        >>> Module("transforms/monitors/alerts.py", []).dotted()
        'transforms.monitors.alerts'
        """
        return self.path.strip("/").removesuffix(".py").replace("/", ".")

    def mutant_globs(self) -> list[str]:
        """mutmut name patterns for ``only`` (empty = every function of the module).

        >>> Module("sidecar/server.py", [], only=["split_body", "Sidecar._ingest"]).mutant_globs()
        ['sidecar.server.x_split_body__mutmut_*', 'sidecar.server.xǁSidecarǁ_ingest__mutmut_*']
        """
        out = []
        for name in self.only:
            cls, _, func = name.rpartition(".")
            out.append(f"{self.dotted()}.{'xǁ' + cls + 'ǁ' + func if cls else 'x_' + func}__mutmut_*")
        return out

    def test_files(self, root: pathlib.Path) -> list[str]:
        """The module's test paths that exist now (globs expanded, sorted, relative to root)."""
        found: list[str] = []
        for pattern in self.tests:
            found += [hit for hit in sorted(glob.glob(pattern, root_dir=root)) if hit not in found]
        return found


@dataclasses.dataclass
class Equivalent:
    """A mutant known to be equivalent: same function, same removed and added lines."""

    module: str
    function: str
    before: str
    after: str
    reason: str


@dataclasses.dataclass
class Result:
    """The outcome of one module's run."""

    module: Module
    counts: dict[str, int]
    equivalent: list[tuple[str, str, str]]  # (mutant, diff, reason)
    survivors: list[tuple[str, str, str]]  # (mutant, status, diff)
    error: str = ""
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def kill_rate(self) -> float | None:
        """(killed + timeout) / (mutants - equivalents), or None when nothing was run."""
        judged = self.total - len(self.equivalent) - self.counts.get(NOT_RUN, 0)
        if judged <= 0:
            return None
        return (self.counts.get(KILLED, 0) + self.counts.get(TIMEOUT, 0)) / judged


def load_config(root: pathlib.Path = ROOT) -> tuple[dict, list[Module], list[Equivalent]]:
    """Settings, modules and known equivalents from pyproject.toml and tools/mutate_equivalents*."""
    conf = toml_loads((root / "pyproject.toml").read_text())["tool"]["predaudit"]["mutate"]
    modules = [Module(**m) for m in conf.pop("module")]
    # one shared file plus one file per area (tools/mutate_equivalents/*.toml), so that work on
    # different modules never edits the same file
    eq_files = [
        root / "tools" / "mutate_equivalents.toml",
        *sorted((root / "tools" / "mutate_equivalents").glob("*.toml")),
    ]
    eqs = [
        Equivalent(**e)
        for f in eq_files
        if f.exists()
        for e in toml_loads(f.read_text()).get("equivalent", [])
    ]
    return conf, modules, eqs


def function_of(mutant: str, dotted: str) -> str:
    """A mutant's function in source terms.

    >>> function_of("sidecar.server.xǁSidecarǁ_ingest__mutmut_12", "sidecar.server")
    'Sidecar._ingest'
    >>> function_of("transforms.sinks.base.x_cached_client__mutmut_3", "transforms.sinks")
    'base.cached_client'
    """
    name = mutant.rsplit("__mutmut_", 1)[0].removeprefix(dotted + ".")
    prefix, _, leaf = name.rpartition(".")
    leaf = leaf.removeprefix("x_") if not leaf.startswith("xǁ") else ".".join(leaf[2:].split("ǁ"))
    return f"{prefix}.{leaf}" if prefix else leaf


def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and added lines of a mutant's diff, stripped (file headers excluded).

    >>> changed_lines("--- a.py\\n+++ a.py\\n@@ -1 +1 @@\\n-    x = 1\\n+    x = 2")
    ('x = 1', 'x = 2')
    """
    lines = diff.splitlines()
    removed = [ln[1:].strip() for ln in lines if ln.startswith("-") and not ln.startswith("---")]
    added = [ln[1:].strip() for ln in lines if ln.startswith("+") and not ln.startswith("+++")]
    return "\n".join(removed), "\n".join(added)


def equivalence(module: Module, mutant: str, diff: str, known: list[Equivalent]) -> str | None:
    """Why a surviving mutant is equivalent, or None.

    >>> m = Module("transforms/dedup.py", [])
    >>> d = '-    x = rows | "Key" >> beam.Map(f)\\n+    x = rows | "XXKeyXX" >> beam.Map(f)'
    >>> equivalence(m, "transforms.dedup.x_f__mutmut_1", d, [])
    'a Beam step label (names the step, changes no output)'
    """
    before, after = changed_lines(diff)
    a, b = _BEAM_LABEL.match(before), _BEAM_LABEL.match(after)
    if a and b and "\n" not in before and (a["pre"], a["post"]) == (b["pre"], b["post"]):
        return "a Beam step label (names the step, changes no output)"
    func = function_of(mutant, module.dotted())
    for e in known:
        if (
            e.module == module.path
            and e.function == func
            and (e.before.strip(), e.after.strip()) == (before, after)
        ):
            return e.reason
    return None


def copy_tree(dest: pathlib.Path) -> None:
    """Copy the working tree's project files (tracked and new, not ignored) into ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard", "--", *COPY],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy the directories
        files = [
            str(p.relative_to(ROOT))
            for name in COPY
            for p in ([ROOT / name] if (ROOT / name).is_file() else (ROOT / name).rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        ]
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def mutmut_config(module: Module, tests: list[str], settings: dict) -> str:
    """The ``[tool.mutmut]`` table for one module's run (appended to the copy's pyproject)."""
    cfg = {
        "source_paths": list(SOURCE_DIRS),
        "only_mutate": [module.files_glob],
        "pytest_add_cli_args_test_selection": tests,
        # doctests of mutmut's generated copies (x_f__mutmut_3) would run once per copy
        "pytest_add_cli_args": ["-k", "not __mutmut_", "-p", "no:cacheprovider"],
        "timeout_multiplier": float(settings.get("timeout_multiplier", 15.0)),
        "process_isolation": module.isolation,
        "use_setproctitle": False,
    }
    return "\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items())


def run_module(
    module: Module, settings: dict, known: list[Equivalent], children: int, deadline: float
) -> Result:
    """Mutate one module in its own copy of the tree and classify every mutant.

    The run stops at ``module_timeout_s`` or at the whole run's ``deadline`` (monotonic
    clock), whichever comes first; mutants it did not reach are reported as "not run".
    """
    t0 = time.monotonic()
    limit = min(float(settings.get("module_timeout_s", 1500)), deadline - t0)
    if limit <= 0:
        return Result(module, {}, [], [], error="not run: the whole run's budget_s was spent")
    work = WORK / module.slug
    tests = module.test_files(ROOT)
    if not [t for t in tests if t.startswith("tests/")]:
        return Result(module, {}, [], [], error=f"no test file matches {module.tests}")
    copy_tree(work)
    with open(work / "pyproject.toml", "a") as f:
        f.write(mutmut_config(module, tests, settings))
    log_path = work / "mutmut.log"
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *module.mutant_globs()]
    error = ""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, error = (
                0,
                f"stopped after {limit:.0f} s (module_timeout_s / budget_s): the rest are 'not run'",
            )
    if rc != 0:
        tail = [
            ln for ln in log_path.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()
        ]
        last = tail[-1].strip() if tail else "no output"
        return Result(
            module, {}, [], [], error=f"mutmut exited {rc} ({last}); log: {log_path.relative_to(ROOT)}"
        )
    return collect(module, known, error, time.monotonic() - t0)


def collect(module: Module, known: list[Equivalent], error: str = "", seconds: float = 0.0) -> Result:
    """Classify the mutants of a module's last run (read from its work tree)."""
    work = WORK / module.slug
    if module.path.endswith(".py"):
        metas = [work / "mutants" / (module.path + ".meta")]
    else:
        metas = sorted((work / "mutants" / module.path).rglob("*.py.meta"))
    if not any(m.exists() for m in metas):
        return Result(module, {}, [], [], error=error or "no results: run it first")
    codes: dict[str, int | None] = {}
    for m in metas:
        if m.exists():
            codes.update(json.loads(m.read_text())["exit_code_by_key"])
    globs = module.mutant_globs()
    if globs:
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, g) for g in globs)}
    counts: dict[str, int] = {}
    statuses = {k: TIMEOUT if v in _TIMEOUT_CODES else _STATUS.get(v, "suspicious") for k, v in codes.items()}
    for s in statuses.values():
        counts[s] = counts.get(s, 0) + 1
    alive = [k for k, s in statuses.items() if s not in (KILLED, TIMEOUT, NOT_RUN)]
    diffs = mutant_diffs(work, alive)
    equivalent, survivors = [], []
    for name in sorted(alive, key=_natural):
        reason = equivalence(module, name, diffs.get(name, ""), known)
        if reason and statuses[name] == SURVIVED:
            equivalent.append((name, diffs.get(name, ""), reason))
        else:
            survivors.append((name, statuses[name], diffs.get(name, "")))
    result = Result(module, counts, equivalent, survivors, error, seconds)
    (work / "survivors.txt").write_text(report([result]))
    return result


def _natural(name: str) -> tuple[str, int]:
    base, _, n = name.rpartition("__mutmut_")
    return base, int(n) if n.isdigit() else 0


def mutant_diffs(work: pathlib.Path, names: list[str]) -> dict[str, str]:
    """Each mutant's diff, computed by mutmut inside the module's work tree (one process)."""
    if not names:
        return {}
    code = (
        "import json, sys\n"
        "from mutmut.mutation.diff_apply import get_diff_for_mutant, find_mutant\n"
        "out = {}\n"
        "for n in json.load(sys.stdin):\n"
        "    try:\n"
        "        out[n] = get_diff_for_mutant(n, path=find_mutant(n).path)\n"
        "    except Exception as exc:\n"
        "        out[n] = f'(no diff: {exc})'\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=work, input=json.dumps(names), capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {n: f"(no diff: {proc.stderr.strip()[-300:]})" for n in names}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[Result]) -> str:
    """The per-module summary."""
    head = f"{'module':<34} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} {'no tests':>8} {'equiv':>5} {'kill rate':>9}"
    lines = [head, "-" * len(head)]
    for r in results:
        if r.error and not r.counts:
            lines.append(f"{r.module.path:<34} ERROR: {r.error.splitlines()[0]}")
            continue
        c = r.counts
        rate = "n/a" if r.kill_rate is None else f"{100 * r.kill_rate:.1f}%"
        lines.append(
            f"{r.module.path:<34} {r.total:>7} {c.get(KILLED, 0):>6} {c.get(TIMEOUT, 0):>7} "
            f"{c.get(SURVIVED, 0) - len(r.equivalent) + c.get('suspicious', 0) + c.get('segfault', 0):>8} "
            f"{c.get(NO_TESTS, 0):>8} {len(r.equivalent):>5} {rate:>9}"
            + (f"  ({c[NOT_RUN]} not run)" if c.get(NOT_RUN) else "")
        )
    return "\n".join(lines)


def report(results: list[Result]) -> str:
    """The survivors file: every live mutant's diff, then the equivalents with their reason."""
    out = ["Mutation testing report (tools/mutate.py). Survivors need a test; equivalents need none.", ""]
    out.append(table(results))
    for r in results:
        out += ["", "=" * 100, f"{r.module.path}: tests {', '.join(r.module.test_files(ROOT))}"]
        if r.error:
            out.append(f"NOTE: {r.error}")
        for name, status, diff in r.survivors:
            out += ["", f"## {status}: {name}", diff]
        for name, diff, reason in r.equivalent:
            out += ["", f"## equivalent ({reason}): {name}", diff]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/mutate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module paths as in pyproject.toml (default: all)")
    parser.add_argument("--jobs", type=int, default=0, help="processes at once (default: pyproject's jobs)")
    parser.add_argument(
        "--budget", type=float, default=0, help="seconds for the whole run (default: budget_s)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="re-read the modules' last runs, run nothing"
    )
    parser.add_argument("--list", action="store_true", help="show the modules and their tests, run nothing")
    args = parser.parse_args(argv)
    settings, modules, known = load_config()
    wanted = [w for arg in args.modules for w in re.split(r"[\s,]+", arg) if w]
    by_path = {m.path.rstrip("/"): m for m in modules}
    unknown = [w for w in wanted if w.rstrip("/") not in by_path]
    if unknown:
        print(f"mutate: unknown module {unknown[0]!r}; choose from: {', '.join(by_path)}", file=sys.stderr)
        return 2
    chosen = [by_path[w.rstrip("/")] for w in wanted] or modules
    if args.list:
        for m in chosen:
            only = f" (only {', '.join(m.only)})" if m.only else ""
            print(f"{m.path}{only}: {' '.join(m.test_files(ROOT)) or 'NO TESTS'}")
        return 0
    if args.report_only:
        return summarise([collect(m, known) for m in chosen], settings)
    jobs = max(1, args.jobs or int(settings.get("jobs", 2)))
    os.nice(int(settings.get("nice", 19)))  # a shared machine: everyone else's tests come first
    # Modules side by side (each with its serial stats run), the workers split between them.
    parallel = min(jobs, len(chosen))
    children = max(1, jobs // parallel)
    print(
        f"mutate: {len(chosen)} module(s), {parallel} at a time, {children} mutant worker(s) each", flush=True
    )
    results: dict[str, Result] = {}
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        deadline = time.monotonic() + (args.budget or float(settings.get("budget_s", 3000)))
        futures = {pool.submit(run_module, m, settings, known, children, deadline): m for m in chosen}
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            results[r.module.path] = r
            rate = "n/a" if r.kill_rate is None else f"{100 * r.kill_rate:.1f}%"
            print(
                f"mutate: {r.module.path}: {r.total} mutants, kill rate {rate} ({r.seconds:.0f} s)",
                flush=True,
            )
    return summarise([results[m.path] for m in chosen], settings)


def summarise(ordered: list[Result], settings: dict) -> int:
    """Print the table, write the survivors file; 1 when a module is below ``fail_under``."""
    WORK.mkdir(parents=True, exist_ok=True)
    survivors_file = WORK / "survivors.txt"
    survivors_file.write_text(report(ordered))
    print()
    print(table(ordered))
    print(
        f"\nkill rate = (killed + timeout) / (mutants - equivalent); survivor diffs: {survivors_file.relative_to(ROOT)}"
    )
    floor = float(settings.get("fail_under", 90.0))
    failed = [
        r for r in ordered if r.error and not r.counts or r.kill_rate is None or 100 * r.kill_rate < floor
    ]
    for r in ordered:
        if r.error:
            print(f"mutate: {r.module.path}: {r.error}", file=sys.stderr)
    if failed:
        print(
            f"mutate: {len(failed)} module(s) below {floor:.0f}% or not run: {', '.join(r.module.path for r in failed)}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
