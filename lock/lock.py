"""The dependency lock: every package `make setup` installs, at one version, with its hashes.

Why a lock: `pip` resolves afresh on every install, so two machines set up a month apart built
different environments. `lock/requirements.txt` is resolved once (by uv, from `pyproject.toml` with
all its extras plus the model packages of `lock/models*.in`), committed, and installed as it stands
with `uv pip sync --require-hashes`: no resolution at set-up, the same bytes everywhere.

Commands (`python lock/lock.py COMMAND`; only the standard library and `packaging`):

- ``compile UV``: resolve and write the lock (what `make lock` runs). Torch is the CPU wheel this
  machine provides (``/opt/wheels``), hence the ``torch==X+cpu`` of ``lock/overrides.txt``.
- ``check``: the lock was made from the current inputs (their digest is in its header) and pins a
  version that satisfies every requirement of `pyproject.toml`; exit 1 naming what differs.
- ``check-env PYTHON``: the environment of PYTHON holds exactly the locked versions (`pip freeze`
  equals the lock; the editable longforge itself left out) and `pip check` finds every installed
  package's requirements met; exit 1 with the difference.
- ``pin NAME``: the lock's requirement line for one package, hashes included (set-up bootstraps uv
  with it before anything else).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOCK = HERE / "requirements.txt"
OVERRIDES = HERE / "overrides.txt"  # torch's CPU wheel of /opt/wheels
INPUTS = [ROOT / "pyproject.toml", HERE / "models.in", HERE / "tools.in", HERE / "models-nodeps.in", OVERRIDES]
FIND_LINKS = "/opt/wheels"
DIGEST_LINE = "# inputs-sha256: "


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def inputs_digest() -> str:
    """A digest of what the lock is made from: pyproject's dependency tables and the model lists
    (not the rest of pyproject, so a version bump or a ruff setting does not ask for a new lock)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    h = hashlib.sha256()
    h.update(repr(sorted(project.get("dependencies", []))).encode())
    for extra, reqs in sorted(project.get("optional-dependencies", {}).items()):
        h.update(repr((extra, sorted(reqs))).encode())
    for path in INPUTS[1:]:
        h.update(path.read_bytes())
    return h.hexdigest()


def pins(lock_text: str | None = None) -> dict[str, str]:
    """{normalised name: version} of every package the lock installs."""
    text = LOCK.read_text() if lock_text is None else lock_text
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
        if m:
            out[_norm(m.group(1))] = m.group(2)
    return out


def pins_of_inputs(path: Path) -> list[str]:
    """The normalised package names listed in a ``lock/*.in`` file."""
    return [_norm(re.split(r"[\s=<>!~\[;]", ln.strip())[0]) for ln in path.read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def compile_lock(uv: str) -> None:
    links = ["--find-links", FIND_LINKS] if Path(FIND_LINKS).is_dir() else []
    common = [uv, "pip", "compile", "--quiet", "--python-version", "3.11", "--python-platform",
              "x86_64-manylinux_2_28", *links, "--generate-hashes", "--no-header"]
    main = subprocess.run([*common, "--all-extras", "--override", "lock/overrides.txt", "pyproject.toml",
                           "lock/models.in", "lock/tools.in"], check=True, capture_output=True, text=True,
                          cwd=ROOT).stdout
    nodeps = subprocess.run([*common, "--no-deps", "lock/models-nodeps.in"], check=True, capture_output=True,
                            text=True, cwd=ROOT).stdout
    header = ("# The exact environment of `make setup` (resolved by `make lock`; do not edit by hand).\n"
              f"{DIGEST_LINE}{inputs_digest()}\n")
    LOCK.write_text(header + main + "# installed without their dependencies (lock/models-nodeps.in)\n" + nodeps)
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(pins())} packages")


def check() -> list[str]:
    """What is wrong with the lock against its inputs (empty when it matches)."""
    from packaging.requirements import Requirement

    problems = []
    text = LOCK.read_text()
    recorded = next((ln[len(DIGEST_LINE):].strip() for ln in text.splitlines() if ln.startswith(DIGEST_LINE)), None)
    if recorded != inputs_digest():
        problems.append("lock/requirements.txt was made from other inputs than pyproject.toml and lock/*.in "
                        "as they are now -> run `make lock` and commit lock/requirements.txt")
    locked = pins(text)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project.get("dependencies", []))
    for reqs in project.get("optional-dependencies", {}).values():
        wanted += reqs
    for line in wanted:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = locked.get(_norm(req.name))
        if version is None:
            problems.append(f"pyproject.toml needs {line!r}, the lock has no {req.name} -> run `make lock`")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"pyproject.toml needs {line!r}, the lock pins {req.name}=={version} -> run `make lock`")
    return problems


def check_env(python: str) -> list[str]:
    """Differences between the environment of ``python`` and the lock, and any installed package
    whose own requirements are not met (`pip check`: a lock edited by hand that lost a dependency)."""
    frozen = subprocess.run([python, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout
    have = pins(frozen)
    have.pop("longforge", None)
    want = pins()
    problems = [f"{n}: locked {want[n]}, installed {have.get(n, 'nothing')}" for n in sorted(want)
                if have.get(n) != want[n]]
    problems += [f"{n}=={have[n]} is installed but not locked" for n in sorted(set(have) - set(want))]
    broken = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    nodeps = set(pins_of_inputs(HERE / "models-nodeps.in"))  # installed without their requirements, by design
    problems += [f"pip check: {line}" for line in broken.stdout.splitlines()
                 if line.strip() and _norm(line.split()[0]) not in nodeps]
    return problems


def pin_line(name: str) -> str:
    """One package's requirement with its hash lines, as the lock holds it."""
    lines = LOCK.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(name)}==", line):
            block = [line]
            while block[-1].endswith("\\"):
                i += 1
                block.append(lines[i])
            return "\n".join(block) + "\n"
    raise SystemExit(f"{name} is not in {LOCK}")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "compile":
        compile_lock(args[0] if args else "uv")
        return 0
    if cmd == "pin":
        sys.stdout.write(pin_line(args[0]))
        return 0
    if cmd in ("check", "check-env"):
        problems = check() if cmd == "check" else check_env(args[0] if args else sys.executable)
        for p in problems:
            print(f"lock: {p}", file=sys.stderr)
        if not problems:
            what = "matches pyproject.toml" if cmd == "check" else "is what is installed (pip freeze equals it)"
            print(f"lock: lock/requirements.txt {what} ({len(pins())} packages)")
        return 1 if problems else 0
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
