#!/usr/bin/env python3
"""Mutation testing of the security-critical modules, with a score per module (docs/mutation.md).

mutmut (configured in ``[tool.mutmut]`` of pyproject.toml) copies the packages into a ``mutants``
directory, rewrites each function of the mutated modules into its variants and runs, for each
variant, the tests that reached that function. A mutant is *killed* when a test fails.

The modules are mutated in groups, each with the tests beside its modules: a function that every
test reaches (canonical JSON, the rate limiter) would otherwise run the whole selection per
surviving mutant. Each group runs in its own directory under ``mutants/by-module/`` (symlinks to the
sources and tests, and pyproject.toml with the group's ``only_mutate`` and test selection), so each
keeps its own mutmut cache and a rerun only tests the functions that changed.

Surviving mutants that cannot be killed (the mutant behaves exactly as the original) are listed with
their reason in docs/mutation.md; they count as *equivalent*, and a module's score is
``killed / (mutants - equivalent)``. Timeouts count as killed, as in mutmut.

Usage::

    .ci/mutation.py                      # every module; fails if one scores below 90 %
    .ci/mutation.py --module shared/signing/_keys.py
    .ci/mutation.py --changed origin/main  # CI: modules changed since a ref
    .ci/mutation.py --sample 40            # a fixed-seed sample of mutants
    .ci/mutation.py --changed HEAD~1 --sample 60  # CI: a sample of the changed modules' mutants
    .ci/mutation.py --report-only          # the table of the last run, without running

In the subset modes (``--changed``, ``--sample``) any surviving mutant that is not listed as
equivalent fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutants" / "by-module"
SURVIVORS = ROOT / "docs" / "mutation.md"
TARGET = 90.0
SEED = 14
#: What the scratch directories link to: the packages mutmut copies and the tests it runs.
LINKED = ("shared", "agent", "controlplane", "tests")


@dataclass(frozen=True)
class Group:
    """Modules mutated together and the tests that exercise them."""

    name: str
    modules: tuple[str, ...]
    tests: tuple[str, ...]


GROUPS = (
    Group(
        "signing",
        (
            "shared/signing/_canonical.py",
            "shared/signing/_envelope.py",
            "shared/signing/_keys.py",
            "shared/signing/_keyset.py",
        ),
        ("tests/shared/test_signing.py", "tests/controlplane/signing/test_signing_keys.py"),
    ),
    Group(
        "manifest-checks",
        ("agent/activation/_verify.py",),
        ("tests/agent/test_activation.py", "tests/agent/test_deployments.py"),
    ),
    Group(
        "agent-keys",
        (
            "controlplane/agents/enrollment.py",
            "controlplane/agents/keys.py",
            "controlplane/agents/keycache.py",
            "controlplane/auth/secrets.py",
        ),
        (
            "tests/controlplane/agents/test_enrollment.py",
            "tests/controlplane/agents/test_identity_key.py",
            "tests/controlplane/agents/test_runtime.py",
            "tests/controlplane/agents/test_hot_paths.py",
            "tests/controlplane/agents/test_keycache.py",
            "tests/controlplane/auth/test_tokens.py",
            "tests/controlplane/auth/test_secrets.py",
        ),
    ),
    Group(
        "ratelimit",
        ("controlplane/ratelimit/limiter.py", "controlplane/ratelimit/middleware.py"),
        ("tests/controlplane/test_ratelimit.py", "tests/controlplane/agents/test_fast_lane.py"),
    ),
    Group(
        "blobs",
        ("controlplane/blobs/references.py", "controlplane/blobs/store.py"),
        (
            "tests/controlplane/bundles/test_blob_references.py",
            "tests/controlplane/bundles/test_bundles.py",
            "tests/controlplane/artifacts/test_uploads.py",
        ),
    ),
    Group(
        "delivery",
        (
            "controlplane/delivery/lifecycle.py",
            "controlplane/delivery/states.py",
            "controlplane/delivery/approvals.py",
            "controlplane/delivery/rollout.py",
        ),
        ("tests/controlplane/delivery",),
    ),
)


@dataclass
class Score:
    """The mutants of one module, by outcome."""

    module: str
    ran: bool = True
    total: int = 0
    killed: int = 0
    equivalent: int = 0
    other: int = 0
    survivors: list[str] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return self.total - self.equivalent

    @property
    def percent(self) -> float:
        return 100.0 if self.scored == 0 else 100.0 * self.killed / self.scored


def mutant_prefix(module: str) -> str:
    """The dotted prefix of the names mutmut gives the mutants of ``module`` (a path)."""
    return module.removesuffix(".py").replace("/", ".").replace(".__init__", "") + "."


def equivalent_mutants(path: Path = SURVIVORS) -> set[str]:
    """The mutant names listed as equivalent in the survivors file (in backticks)."""
    if not path.exists():
        return set()
    return set(re.findall(r"`([\w.ǁ]+__mutmut_\d+)`", path.read_text(encoding="utf-8")))


def changed_modules(base: str) -> set[str]:
    """The paths changed between ``base`` and the working tree."""
    out = subprocess.run(
        ["git", "diff", "--name-only", base, "--"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


def mutant_names(module: str) -> list[str]:
    """Every mutant mutmut generates for ``module``, by name (nothing is written)."""
    from mutmut.mutation.file_mutation import mutate_file_contents
    from mutmut.utils.format_utils import get_mutant_name

    source = (ROOT / module).read_text(encoding="utf-8")
    mutated = mutate_file_contents(module, source)
    return [get_mutant_name(Path(module), name) for name in mutated.mutant_names]


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(value) for value in values) + "]"


def prepare(group: Group, modules: list[str]) -> Path:
    """The group's scratch directory: links to the sources and a pyproject.toml of its own."""
    directory = WORK / group.name
    directory.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name, target_is_directory=True)
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    settings = tomllib.loads(text)["tool"]["mutmut"]
    start = text.index("\n[tool.mutmut]\n")
    end = text.index("\n[", start + 1)
    section = [
        "[tool.mutmut]",
        f"source_paths = {toml_list(settings['source_paths'])}",
        f"only_mutate = {toml_list(modules)}",
        f"pytest_add_cli_args_test_selection = {toml_list(list(group.tests))}",
        f"pytest_add_cli_args = {toml_list(settings.get('pytest_add_cli_args', []))}",
    ]
    project = text[:start] + "\n" + "\n".join(section) + "\n" + text[end:]
    target = directory / "pyproject.toml"
    if not target.exists() or target.read_text(encoding="utf-8") != project:
        target.write_text(project, encoding="utf-8")
    return directory


def forget_survivors(directory: Path, module: str) -> None:
    """Clear mutmut's cached survivors of ``module`` so they run again against today's tests.

    mutmut keeps a verdict until the mutated function changes; a survivor may be killed by a test
    added since, so only killed verdicts are kept.
    """
    meta = directory / "mutants" / (module + ".meta")
    if not meta.exists():
        return
    data = json.loads(meta.read_text(encoding="utf-8"))
    codes: dict[str, int | None] = data["exit_code_by_key"]
    for name, code in codes.items():
        if code in (0, 33):  # survived, no tests
            codes[name] = None
    meta.write_text(json.dumps(data, indent=4), encoding="utf-8")


def run_group(directory: Path, names: list[str], max_children: int) -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    command = [str(mutmut), "run", "--max-children", str(max_children), *names]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(command, cwd=directory, env=env, check=False).returncode


def exit_codes(directory: Path, module: str) -> dict[str, int | None]:
    meta = directory / "mutants" / (module + ".meta")
    if not meta.exists():
        return {}
    codes: dict[str, int | None] = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return codes


def score(module: str, codes: dict[str, int | None], equivalent: set[str]) -> Score:
    from mutmut.stats import status_by_exit_code

    result = Score(module, ran=bool(codes))
    for name, code in sorted(codes.items()):
        status = status_by_exit_code[code]
        result.total += 1
        if status in ("killed", "timeout", "caught by type check"):
            result.killed += 1
        elif name in equivalent:
            result.equivalent += 1
        elif status in ("survived", "no tests"):
            result.survivors.append(name)
        else:
            result.other += 1
    return result


def table(scores: list[Score]) -> str:
    lines = [
        "| module | mutants | killed | survived | equivalent | timeout/other | score | ≥ 90 % |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in scores:
        if not s.ran:
            lines.append(f"| `{s.module}` | | | | | | not run | **no** |")
            continue
        ok = "yes" if s.percent >= TARGET else "**no**"
        lines.append(
            f"| `{s.module}` | {s.total} | {s.killed} | {len(s.survivors)} | {s.equivalent}"
            f" | {s.other} | {s.percent:.1f} % | {ok} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changed", metavar="BASE", help="only modules changed since git ref BASE")
    parser.add_argument("--sample", metavar="N", type=int, help="a fixed-seed sample of N mutants")
    parser.add_argument("--module", action="append", default=[], help="a module path (repeatable)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of --sample")
    parser.add_argument("--max-children", type=int, default=1, help="mutmut worker processes")
    parser.add_argument("--report-only", action="store_true", help="report the last run")
    args = parser.parse_args(argv)

    known = [module for group in GROUPS for module in group.modules]
    modules = args.module or known
    if unknown := sorted(set(modules) - set(known)):
        parser.error(f"not a mutated module: {', '.join(unknown)}")
    if args.changed:
        changed = changed_modules(args.changed)
        modules = [module for module in modules if module in changed]
        if not modules:
            print(f"No mutated module changed since {args.changed}.")
            return 0

    sampled: set[str] | None = None
    if args.sample is not None:
        population = sorted(name for module in modules for name in mutant_names(module))
        sampled = set(
            random.Random(args.seed).sample(population, min(args.sample, len(population)))
        )

    started = time.monotonic()
    equivalent = equivalent_mutants()
    scores: list[Score] = []
    failed_runs: list[str] = []
    for group in GROUPS:
        mine = [module for module in group.modules if module in modules]
        if not mine:
            continue
        directory = prepare(group, mine)
        names = sorted(n for n in sampled or () if n.startswith(tuple(map(mutant_prefix, mine))))
        if sampled is not None and not names:
            continue
        if not args.report_only:
            for module in mine:
                forget_survivors(directory, module)
            if run_group(directory, names, args.max_children) != 0:
                failed_runs.append(group.name)
        for module in mine:
            codes = exit_codes(directory, module)
            if sampled is not None:
                if not any(name.startswith(mutant_prefix(module)) for name in names):
                    continue
                codes = {name: code for name, code in codes.items() if name in sampled}
            scores.append(score(module, codes, equivalent))

    print()
    print(table(scores))
    print()
    survivors = [name for s in scores for name in s.survivors]
    total, killed = sum(s.total for s in scores), sum(s.killed for s in scores)
    equivalents = sum(s.equivalent for s in scores)
    print(f"{total} mutants: {killed} killed, {equivalents} equivalent, {len(survivors)} surviving")
    if not args.report_only:
        print(f"wall time: {time.monotonic() - started:.0f} s")
    if survivors:
        print(f"\n{len(survivors)} surviving mutants not listed in {SURVIVORS.relative_to(ROOT)}:")
        for name in survivors:
            print(f"  {name}")
        print("(see one with `cd mutants/by-module/<group> && mutmut show <name>`)")
    if failed_runs:
        print(f"mutmut failed in: {', '.join(failed_runs)}", file=sys.stderr)
        return 2
    if not all(s.ran for s in scores):
        return 1
    if args.changed or args.sample is not None:
        return 1 if survivors else 0
    return 1 if any(s.percent < TARGET for s in scores) else 0


if __name__ == "__main__":
    sys.exit(main())
