"""What a Beam cluster's workers need to run longforge's stages: this package and its dependencies.

On Beam's in-process runners the workers are this Python. On Dataflow, Flink or Spark they are
other machines: unless the user names how they get longforge (``--setup_file``,
``--extra_package``, ``--requirements_file`` or a custom ``--sdk_container_image``), the run builds
a wheel of this checkout and a requirements file of its dependencies, and passes both as options,
so ``longforge run ... --runner beam --beam-arg=--runner=DataflowRunner`` needs nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

#: Beam runners whose workers are this process or its children.
IN_PROCESS = {None, "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}
#: Options by which a user already says how workers get longforge.
USER_PROVIDED = ("--setup_file", "--extra_package", "--extra_packages", "--requirements_file",
                 "--sdk_container_image", "--worker_harness_container_image")
#: Extras installed on workers by default: reading remote stores, the analysis stages, the models.
WORKER_EXTRAS = ("remote", "analysis", "models")
# The source the workers run: every package of the distribution (pyproject.toml's packages).
PACKAGES = ("pipelines", "stages", "schemas", "catalog", "gpu_jobs")


def runner_name(beam_args: list[str]) -> str | None:
    name = None
    for i, a in enumerate(beam_args):
        if a.startswith("--runner="):
            name = a.split("=", 1)[1]
        elif a == "--runner" and i + 1 < len(beam_args):
            name = beam_args[i + 1]
    return name


def is_cluster(beam_args: list[str]) -> bool:
    return runner_name(beam_args) not in IN_PROCESS


def worker_dependencies(beam_args: list[str]) -> list[str]:
    """The options that ship longforge to a cluster's workers (none for in-process runners, or
    when the user gave their own)."""
    if not is_cluster(beam_args) or any(a.split("=", 1)[0] in USER_PROVIDED for a in beam_args):
        return []
    wheel, requirements = _built()
    # Workers install the requirements at start-up; the launching machine does not download them
    # all first (several GB with torch), unless the user sets --requirements_cache.
    cache = [] if any(a.startswith("--requirements_cache") for a in beam_args) else ["--requirements_cache=skip"]
    return [f"--extra_package={wheel}", f"--requirements_file={requirements}", *cache]


def cache_dir() -> Path:
    return Path.home() / ".cache" / "longforge" / "beam"


def source_root() -> Path:
    return Path(__file__).resolve().parents[2]


@functools.cache
def _built() -> tuple[str, str]:
    root = source_root()
    if not (root / "pyproject.toml").is_file():
        raise RuntimeError("longforge is not installed from a source checkout, so no wheel can be built for the "
                           "workers -> pass --beam-arg=--sdk_container_image=IMAGE (an image with longforge "
                           "installed) or --beam-arg=--extra_package=WHEEL")
    digest = hashlib.sha256()
    for f in sorted([root / "pyproject.toml"] + [p for d in PACKAGES
                                                  for p in (root / d).rglob("*") if p.suffix in (".py", ".yaml")]):
        digest.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    out = cache_dir() / digest.hexdigest()[:16]
    wheels = sorted(out.glob("longforge-*.whl"))
    if not wheels:
        out.mkdir(parents=True, exist_ok=True)
        build_dir = root / "build"
        had_build_dir = build_dir.exists()
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(root)], capture_output=True, text=True)
        if not had_build_dir:  # setuptools' scratch folder in the checkout: ours to remove, not the user's
            shutil.rmtree(build_dir, ignore_errors=True)
        wheels = sorted(out.glob("longforge-*.whl"))
        if r.returncode != 0 or not wheels:
            raise RuntimeError(f"could not build a wheel of longforge for the workers: {r.stderr[-500:]}")
    requirements = out / "requirements.txt"
    requirements.write_text("\n".join(worker_requirements()) + "\n", encoding="utf-8")
    return str(wheels[0]), str(requirements)


def worker_requirements() -> list[str]:
    """longforge's requirements with the worker extras, as pip reads them."""
    from packaging.requirements import Requirement

    out = []
    for spec in importlib.metadata.requires("longforge") or []:
        req = Requirement(spec)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in WORKER_EXTRAS):
            req.marker = None
            out.append(str(req))
    return sorted(set(out))
