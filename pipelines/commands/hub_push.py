"""``longforge push``: a built artifact to a Hugging Face Hub dataset repo, with a card from the catalog.

The upload is huggingface_hub's own (``HfApi.upload_folder``: batched commits, retries with
backoff, and files already on the Hub with the same content skipped, so an interrupted push is
resumed by running it again). Each config is its own upload, the card last: a push cut off midway
leaves whole configs and the previous card. The token comes from where huggingface_hub looks
(``HF_TOKEN``, ``hf auth login``) and goes only into the request headers: never printed, logged,
written to the card or to the catalog.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from catalog import Catalog
from pipelines import storage
from pipelines.engine import markdown

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CONFIG = re.compile(r"^[A-Za-z0-9][\w.-]*$")


class PushError(RuntimeError):
    """A push that cannot start or did not finish; the message says why and what to do."""


@dataclass
class Pushed:
    repo: str
    revision: str
    commit: str
    configs: list[str]
    files: int
    n_bytes: int
    url: str


# -- what to push ----------------------------------------------------------------------------------


def resolve_artifact(catalog: Catalog, what: str) -> dict:
    """An output artifact by id or name, a run's main output by run id, or ``latest``."""
    cols = "a.artifact_id, a.run_id, a.name, a.path, a.n_records, a.n_bytes, a.fingerprint, a.schema_name, " \
           "a.schema_version, r.pipeline, r.pipeline_file, r.params, r.seed, r.runner, r.code_version, r.status"
    base = f"SELECT {cols} FROM artifacts a JOIN runs r USING (run_id) WHERE a.kind = 'output' "
    if what == "latest":
        names, rows = catalog.query(base + "AND a.name = r.pipeline ORDER BY a.created_at DESC LIMIT 1")
    else:
        names, rows = catalog.query(base + "AND (a.artifact_id = ? OR a.name = ? OR (a.run_id = ? AND a.name = "
                                    "r.pipeline)) ORDER BY a.created_at DESC LIMIT 1", [what, what, what])
    if not rows:
        raise PushError(f"no output artifact or run '{what}' in {catalog.path} "
                        "(`longforge catalog artifacts` lists them)")
    art = dict(zip(names, rows[0], strict=True))
    if art["status"] != "succeeded":
        raise PushError(f"run {art['run_id']} of artifact {art['artifact_id']} ended '{art['status']}': "
                        "only a finished run's output is pushed (rerun it to resume)")
    return art


def side_artifacts(catalog: Catalog, art: dict) -> list[dict]:
    """The other outputs of the run (scores, schedules, markers): configs of their own."""
    if art["name"] != art["pipeline"]:
        return []
    names, rows = catalog.query("SELECT artifact_id, name, path, n_records, fingerprint, schema_name FROM artifacts "
                                "WHERE run_id = ? AND kind = 'output' AND artifact_id <> ? ORDER BY name",
                                [art["run_id"], art["artifact_id"]])
    return [dict(zip(names, r, strict=True)) for r in rows]


def _config_name(name: str, main: str, config: str) -> str:
    if name == main:
        return config
    return f"{config}-{name.split(':', 1)[1] if ':' in name else name}"


# -- the card --------------------------------------------------------------------------------------


def card_facts(catalog: Catalog, art: dict) -> dict:
    """Everything the card says, from the catalog: counts, stages, rejects, lineage, scores, metrics."""
    run = art["run_id"]
    _, stats = catalog.query("SELECT step, stage, shape, records_in, records_out, records_rejected, records_dropped "
                             "FROM stage_stats WHERE run_id = ? ORDER BY step, rowid", [run])
    _, rejects = catalog.query("SELECT stage, reason, kind, count(*) FROM rejects WHERE run_id = ? "
                               "GROUP BY ALL ORDER BY 4 DESC, 1, 2 LIMIT 20", [run])
    _, scores = catalog.query(
        "SELECT job, model, revision, metric, CAST(settings AS VARCHAR), count(*), avg(value) FROM scores "
        "WHERE run_id = ? GROUP BY ALL ORDER BY 1, 2, 4", [run])
    _, metrics = catalog.query("SELECT stage, name, value FROM metrics WHERE run_id = ? AND stage NOT IN "
                               "('resume', 'publish') ORDER BY 1, 2", [run])
    return {"stats": stats, "rejects": rejects, "scores": scores, "metrics": metrics,
            "sources": lineage_sources(catalog, art["artifact_id"])}


def lineage_sources(catalog: Catalog, artifact_id: str, limit: int = 50) -> list[dict]:
    """The source inputs behind an artifact, following outputs of earlier runs back to what no
    run of the catalog made (a corpus, a user's files), each with its licence where recorded."""
    seen, frontier, sources = {artifact_id}, [artifact_id], []
    while frontier and len(seen) < limit:
        placeholders = ", ".join("?" for _ in frontier)
        names, rows = catalog.query(
            f"SELECT DISTINCT p.artifact_id, p.name, p.kind, p.path, p.n_records, r.pipeline FROM lineage l "
            f"JOIN artifacts p ON p.artifact_id = l.parent_artifact_id LEFT JOIN runs r ON r.run_id = p.run_id "
            f"WHERE l.child_artifact_id IN ({placeholders}) ORDER BY p.path", frontier)
        frontier = []
        for row in rows:
            a = dict(zip(names, row, strict=True))
            if a["artifact_id"] in seen:
                continue
            seen.add(a["artifact_id"])
            if a["kind"] == "input":
                a["license"] = source_license(a["path"])
                sources.append(a)
            else:
                frontier.append(a["artifact_id"])
    return sources


def source_license(path: str) -> str:
    """A source's licence: the ``license`` column of its Parquet records, or the licence line of
    the card beside it (``longforge corpus build`` writes both)."""
    if storage.is_remote(path):
        return "not recorded (remote input)"
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    parquet = sorted(folder.rglob("*.parquet"))[:50] if p.is_dir() else [p] if p.suffix == ".parquet" else []
    if parquet:
        import duckdb

        try:
            found = duckdb.sql("SELECT DISTINCT license FROM read_parquet(?) WHERE license IS NOT NULL ORDER BY 1 "
                               "LIMIT 5", params=[[str(f) for f in parquet]]).fetchall()
            if found:
                return "; ".join(str(r[0]) for r in found)
        except duckdb.Error:
            pass
    for card in (folder / "README.md", folder.parent / "README.md"):
        if card.is_file():
            m = re.search(r"^- licen[cs]e: (.+)$", card.read_text(encoding="utf-8", errors="replace"), re.M)
            if m:
                return m.group(1).strip()
    return "not recorded"


class _Code(str):
    """A table value shown as inline code (escaped by markdown.code, not as a plain cell)."""


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return markdown.code(v) if isinstance(v, _Code) else markdown.cell(v)


def _table(header: list[str], rows: list) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def render_card(repo: str, art: dict, facts: dict, configs: list[dict], pipeline_yaml: str) -> str:
    """The README.md of the repo: the Hub's YAML header (configs, tags), then the catalog's figures."""
    header = {"configs": [{"config_name": c["config"], "data_files": [{"split": "train",
                                                                       "path": f"{c['config']}/*.parquet"}],
                           **({"default": True} if i == 0 else {})} for i, c in enumerate(configs)],
              "tags": ["longforge", art["pipeline"]]}
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             f"# {markdown.cell(configs[0]['config'])}", "",
             f"Built by longforge pipeline {markdown.code(art['pipeline'])} (run {markdown.code(art['run_id'])}, "
             f"{markdown.cell(art['runner'])} runner, seed {markdown.cell(art['seed'])}, code "
             f"{markdown.cell(art['code_version'])}).", "",
             "## Configs", "",
             _table(["config", "records", "schema", "content fingerprint"],
                    [(c["config"], c["n_records"], c["schema"] or "", _Code(c["fingerprint"][:16])) for c in configs]),
             "", *markdown.fenced("import datasets\n"
                                  f"ds = datasets.load_dataset({markdown.python_string(repo)}, "
                                  f"{markdown.python_string(configs[0]['config'])}, split=\"train\")", "python"), ""]
    fields = configs[0].get("fields") or []
    if fields:
        lines += ["## Fields", "", _table(["field", "type"], [(_Code(n), _Code(t)) for n, t in fields]), ""]
    lines += ["## Record accounting (per stage)", "",
              _table(["step", "stage", "shape", "in", "out", "rejected", "dropped"], facts["stats"]), ""]
    if facts["rejects"]:
        lines += ["Rejected and dropped records by reason (the catalog holds each record's):", "",
                  _table(["stage", "reason", "kind", "records"], facts["rejects"]), ""]
    lines += ["## Lineage and licences", ""]
    if facts["sources"]:
        lines += [_table(["source", "records", "licence"],
                         [(s["name"], s["n_records"], s["license"]) for s in facts["sources"]]), ""]
    else:
        lines += ["No source inputs are recorded in the catalog for this artifact.", ""]
    if facts["scores"]:
        lines += ["## Scores: models and settings", "",
                  _table(["job", "model", "revision", "metric", "settings", "records", "mean"], facts["scores"]), ""]
    if facts["metrics"]:
        lines += ["## Metrics", "", _table(["stage", "metric", "value"], facts["metrics"]), ""]
    if pipeline_yaml:
        lines += ["## Pipeline", "", *markdown.fenced(pipeline_yaml.strip(), "yaml"), ""]
    return "\n".join(lines)


def pipeline_text(art: dict) -> str:
    """The pipeline as run: the catalog's resolved spec (secrets already redacted there)."""
    try:
        params = json.loads(art["params"]) if isinstance(art["params"], str) else art["params"]
    except ValueError:
        params = None
    return yaml.safe_dump(params, sort_keys=False, allow_unicode=True) if params else ""


# -- the upload ------------------------------------------------------------------------------------


def _check_repo_id(repo: str) -> None:
    """OWNER/NAME as the Hub takes it (its own validator), in ASCII, before anything is read or sent."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    ok = bool(_REPO_ID.match(repo)) and repo.isascii()
    if ok:
        try:
            validate_repo_id(repo)
        except HFValidationError:
            ok = False
    if not ok:
        raise PushError(f"'{repo}' is not a Hub repo id: give OWNER/NAME, letters, digits, '-', '_' and '.', "
                        "starting and ending with a letter or digit, no '--' or '..'")


def hub_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN, or run `hf auth login`")
    return token


def _local_copy(path: str, scratch: Path) -> Path:
    """The artifact's folder on this machine (a remote one is fetched once into ``scratch``)."""
    if not storage.is_remote(path):
        return Path(path)
    fs, p = storage.filesystem(path)
    dest = scratch / "remote"
    for f in fs.find(p.rstrip("/") + "/data"):
        target = dest / "data" / f.rsplit("/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f, str(target))
    return dest


def push(catalog: Catalog, what: str, repo: str, *, private: bool = False, revision: str | None = None,
         config: str | None = None, endpoint: str | None = None, progress=print) -> Pushed:
    _check_repo_id(repo)
    art = resolve_artifact(catalog, what)
    config = config or art["pipeline"]
    if not _CONFIG.match(config) or config.lower() in ("readme.md", ".gitattributes") or len(config) > 96:
        raise PushError(f"config name '{config}' may hold letters, digits, '_', '-' and '.' only (at most 96), and "
                        "may not be a file the repo keeps (README.md)")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise PushError("HF_HUB_OFFLINE is set: nothing can be pushed while offline (unset it to push)")
    token = hub_token()
    from pipelines.storage.redaction import install_log_redaction, remember_secrets

    install_log_redaction()
    remember_secrets(["--token", token])

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="longforge-push-") as scratch:
        configs = [_config_of(a, art, config, Path(scratch)) for a in [art] + side_artifacts(catalog, art)]
        card = render_card(repo, art, card_facts(catalog, art), configs, pipeline_text(art))
        try:
            api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
            if revision:
                api.create_branch(repo, branch=revision, repo_type="dataset", exist_ok=True)
            commit = None
            for c in configs:
                progress(f"pushing config {c['config']}: {len(c['files'])} files")
                # One commit per config: its new files, and the Parquet files an earlier push left there
                # removed (a config holds one run's records, never a mix).
                info = api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=str(c["folder"]),
                                         path_in_repo=c["config"], revision=revision,
                                         allow_patterns=["train-*.parquet"], delete_patterns=["*.parquet"],
                                         commit_message=f"longforge: {c['config']} from run {art['run_id']}")
                commit = getattr(info, "oid", None) or commit
            card_file = Path(scratch) / "README.md"
            card_file.write_text(card, encoding="utf-8")
            info = api.upload_file(path_or_fileobj=str(card_file), path_in_repo="README.md", repo_id=repo,
                                   repo_type="dataset", revision=revision,
                                   commit_message=f"longforge: card for run {art['run_id']}")
            commit = getattr(info, "oid", None) or commit
        except OfflineModeIsEnabled:
            raise PushError("HF_HUB_OFFLINE is set: nothing can be pushed while offline") from None
        except HfHubHTTPError as e:
            status = getattr(e.response, "status_code", None)
            if status in (401, 403):
                raise PushError(f"the Hub refused the token for {repo} (HTTP {status}): check that it may write "
                                "there (`hf auth whoami`), or set another in HF_TOKEN") from None
            raise PushError(f"the Hub answered HTTP {status} for {repo}: {_first_line(e)}; "
                            "rerun the same command to resume (finished files are not sent again)") from None
        except Exception as e:  # connection refused, DNS, timeouts: no network
            if not _is_network_error(e):
                raise
            raise PushError(f"cannot reach the Hub at {api.endpoint}: {type(e).__name__}; "
                            "rerun when online (finished files are not sent again)") from None
        n_files = sum(len(c["files"]) for c in configs) + 1
        n_bytes = sum(f.stat().st_size for c in configs for f in c["files"]) + len(card.encode())
    pushed = Pushed(repo, revision or "main", commit or "", [c["config"] for c in configs], n_files, n_bytes,
                    f"{api.endpoint}/datasets/{repo}")
    catalog.record_push(artifact_id=art["artifact_id"], run_id=art["run_id"], repo=repo, revision=pushed.revision,
                        commit=pushed.commit, configs=pushed.configs, files=n_files, n_bytes=n_bytes,
                        private=private, endpoint=api.endpoint, pushed_at=datetime.now(UTC).replace(tzinfo=None))
    return pushed


def _config_of(a: dict, art: dict, config: str, scratch: Path) -> dict:
    """One artifact as a config of the push: exactly its fingerprinted files, checked to still be
    the run's, with its fields from the registered schema."""
    from schemas import REGISTRY

    folder = _local_copy(a["path"], scratch / a["artifact_id"]) / "data"
    # exactly the files the fingerprint covers (publish.dataset_fingerprint): a stray Parquet
    # file in the folder is not the run's and is not sent
    files = sorted(folder.glob("train-*.parquet")) if folder.is_dir() else []
    if not files:
        raise PushError(f"artifact {a['name']} has no Parquet files under {a['path']}/data "
                        "(moved or deleted since the run?)")
    # What is sent is what the card describes: the folder may have been rebuilt since by another
    # run (--overwrite), and its records would go out under this run's card and counts.
    from pipelines.engine.publish import dataset_fingerprint

    n_now, _, fingerprint_now = dataset_fingerprint(str(folder.parent))
    if fingerprint_now != a["fingerprint"]:
        raise PushError(f"{a['path']} no longer holds the records of run {art['run_id']} (now {n_now:,} "
                        f"records, fingerprint {fingerprint_now[:12]}; the catalog says {a['n_records']:,}, "
                        f"{a['fingerprint'][:12]}): another run rebuilt it -> push that run's artifact "
                        "(`longforge catalog artifacts`), or rerun this one")
    schema = REGISTRY.schemas.get(f"{a['schema_name']}@{a.get('schema_version') or 1}") \
        if a.get("schema_name") else None
    return {"config": _config_name(a["name"], art["name"], config), "folder": folder, "files": files,
            "n_records": a["n_records"], "fingerprint": a["fingerprint"], "schema": a.get("schema_name"),
            "fields": [(f.name, str(f.type)) for f in schema.arrow] if schema else []}


def _is_network_error(e: Exception) -> bool:
    """OSError, or the transport errors of whichever HTTP client the Hub library uses (httpx, its
    forks, requests), known by their class names rather than by importing each client."""
    names = {"TransportError", "ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError",
             "ConnectionError", "Timeout", "ProxyError"}
    return isinstance(e, OSError) or any(c.__name__ in names for c in type(e).__mro__)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:300] if str(e) else type(e).__name__


__all__ = ["PushError", "Pushed", "push", "render_card", "resolve_artifact"]
