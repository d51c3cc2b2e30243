"""Pipeline files: safe YAML loading with line numbers, and strict validation.

A pipeline file is data, never code: it is read with PyYAML's safe loader and checked against
pydantic models that forbid unknown keys. Every error names the file, the line, the key and the
fix, and is raised before any work starts.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class PipelineError(Exception):
    """A pipeline file that cannot run, with where and how to fix it."""

    def __init__(self, file: str, line: int | None, key: str, message: str, fix: str = ""):
        self.file, self.line, self.key, self.message, self.fix = file, line, key, message, fix
        where = f"{file}:{line}" if line else file
        text = f"{where}: {key}: {message}"
        if fix:
            text += f" -> {fix}"
        super().__init__(text)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _local_path(value: str | None) -> str | None:
    """A ``file://`` URL as the local path it names (storage.local_path); a URL of another host is
    refused while the file is validated, naming its line."""
    from pipelines.storage import local_path

    return local_path(value) if value is not None else None


class InputSpec(_Strict):
    path: str = Field(description="file, folder or glob; JSONL (.jsonl, .gz, .zst), Parquet, text, HF")

    _local = field_validator("path")(_local_path)
    format: Literal["auto", "jsonl", "parquet", "text", "hf"] = "auto"
    id_field: str = "id"
    text_field: str = "text"
    source: str | None = Field(None, description="value of the 'source' column (default: the file name)")


class ReadSpec(_Strict):
    shard_mb: float = Field(64.0, ge=0.01, description="target input bytes per shard (at least 0.01 MB)")
    max_record_bytes: int = Field(8_000_000, gt=0, description="larger records are rejected")


class OutputSpec(_Strict):
    path: str | None = Field(None, description="output folder (default: out/<pipeline name>)")
    records_per_file: int = Field(100_000, gt=0, description="records per output Parquet file")

    _local = field_validator("path")(_local_path)


class RunnerSpec(_Strict):
    name: Literal["local", "beam", "datatrove", "ray"] = "local"
    workers: int = Field(1, ge=1)
    beam_args: list[str] = Field(default_factory=list)


#: A pipeline's name and a stage's label become folder names (out/<name>), catalog rows and dataset
#: card headers: letters, digits, '.', '_' and '-', starting with a letter or digit (no '..', no
#: '/', no newline, nothing YAML or Markdown reads as syntax).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _plain_name(value: str | None, what: str) -> str | None:
    if value is not None and not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a plain name: use letters, digits, '.', '_' and '-', starting "
                         "with a letter or digit, at most 100 characters (it names folders, catalog rows and the "
                         "dataset card)")
    return value


class StageSpec(_Strict):
    stage: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @field_validator("label")
    @classmethod
    def _label_is_plain(cls, v: str | None) -> str | None:
        return _plain_name(v, "label")


#: Seeds are stored as DuckDB BIGINT and fed to numpy; negative or larger ones fail later, not here.
MAX_SEED = 2**63 - 1
#: A pipeline file is a page of YAML: bigger ones, or ones whose aliases expand past this many
#: nodes ("billion laughs"), are refused before anything is built from them.
MAX_PIPELINE_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


class PipelineSpec(_Strict):
    name: str
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED, description="every random choice derives from it and the record id")
    inputs: list[InputSpec] = Field(default_factory=list)
    read: ReadSpec = Field(default_factory=ReadSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    runner: RunnerSpec = Field(default_factory=RunnerSpec)
    stages: list[StageSpec] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, v: str) -> str:
        return _plain_name(v, "name")


class LoadedSpec:
    """A validated pipeline plus where each key was written, for later error messages."""

    def __init__(self, spec: PipelineSpec, file: str, lines: dict[tuple, int]):
        self.spec, self.file, self.lines = spec, file, lines

    def line_of(self, path: tuple) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def error(self, path: tuple, message: str, fix: str = "") -> PipelineError:
        return PipelineError(self.file, self.line_of(path), _dotted(path), message, fix)


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(file)"


def _line_map(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), lines)


def did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(sorted(options))}"


def _describe_type_error(err: dict) -> str:
    got = err.get("input")
    got_text = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    return f"{err['msg'].lower()} (got {got_text})"


def _raise_validation(e: ValidationError, model: type[BaseModel], file: str, lines, prefix: tuple):
    # A misspelled key also shows up as a missing one: report the misspelling, it names the fix.
    errors = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
    err = errors[0]
    loc = prefix + tuple(err["loc"])
    key = _dotted(loc)
    line = LoadedSpec(None, file, lines).line_of(loc)  # type: ignore[arg-type]
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, err["loc"][:-1])
        raise PipelineError(file, line, key, "unknown key", did_you_mean(err["loc"][-1], allowed))
    if err["type"] == "missing":
        raise PipelineError(file, line, key, "required key is missing", f"add '{err['loc'][-1]}:'")
    field = model.model_fields.get(err["loc"][0]) if len(err["loc"]) == 1 else None
    expected = f" ({_type_name(field.annotation)})" if field is not None else ""
    name = err["loc"][-1] if err["loc"] else (prefix[-1] if prefix else "the file")
    fix = f"give '{name}' a valid value{expected}; the parameters are listed by " + (
        "`longforge stages`" if prefix[:1] == ("stages",) else "the README's pipeline reference")
    raise PipelineError(file, line, key, _describe_type_error(err), fix)


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (sub)model that ``loc`` points into."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if field is None:
            break
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or ()
        candidates = [ann, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), current)
    return list(current.model_fields)


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, but a key written twice in one mapping is an error (YAML's last-wins hides typos)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = key_node.value
                if key in seen and key != "<<":
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key}' appears twice in one mapping (first on line {seen[key]})",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node, file: str) -> None:
    """Refuse a document whose aliases expand to more than MAX_YAML_NODES nodes. The count is taken
    on the composed graph with memoisation, so it costs the file's size, never the expansion's."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            visiting.discard(id(node))
            total = 1 + sum(sizes.get(id(k), 0) for k in kids)
            sizes[id(node)] = min(total, MAX_YAML_NODES + 1)
            continue
        if id(node) in visiting:
            raise PipelineError(file, node.start_mark.line + 1, "(file)", "an alias refers to itself",
                                "a pipeline file cannot hold a recursive structure; write the values out")
        visiting.add(id(node))
        stack.append((node, True))
        for k in kids:
            if id(k) in visiting:
                raise PipelineError(file, k.start_mark.line + 1, "(file)",
                                    "an alias refers to a value that contains it",
                                    "a pipeline file cannot hold a recursive structure; write the values out")
            if id(k) not in sizes:
                stack.append((k, False))
    if sizes[id(root)] > MAX_YAML_NODES:
        raise PipelineError(file, root.start_mark.line + 1, "(file)",
                            f"its aliases expand to more than {MAX_YAML_NODES:,} values",
                            "write the values out, or use fewer nested '*alias' references")


def load_pipeline(path: str | Path) -> LoadedSpec:
    """Read and validate a pipeline file (structure and stage parameters, not yet schemas)."""
    file = str(path)
    too_big = PipelineError(file, None, "(file)", f"larger than {MAX_PIPELINE_BYTES >> 10} KiB",
                            "a pipeline file describes stages; put data in an input file")
    try:
        if Path(path).is_dir():
            raise PipelineError(file, None, "(file)", "a folder, not a pipeline file",
                                "give the YAML file (e.g. pipelines/icp.yaml)")
        with open(path, "rb") as f:  # at most one byte past the limit is read, whatever the file is
            raw = f.read(MAX_PIPELINE_BYTES + 1)
    except FileNotFoundError:
        raise PipelineError(file, None, "(file)", "no such pipeline file", "check the path") from None
    except OSError as e:
        raise PipelineError(file, None, "(file)", f"cannot be read ({e.strerror})", "check the path") from None
    if len(raw) > MAX_PIPELINE_BYTES:
        raise too_big
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PipelineError(file, None, "(file)", f"not UTF-8 ({e.reason})", "save the file as UTF-8") from None
    try:
        loader = _StrictLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expansion(node, file)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = str(getattr(e, "problem", e))
        if "appears twice" in problem:
            raise PipelineError(file, mark.line + 1 if mark else None, problem.split("'")[1], problem,
                                "keep one of the two (YAML would silently use the last)") from None
        raise PipelineError(
            file, mark.line + 1 if mark else None, "(syntax)", f"invalid YAML: {problem}",
            "fix the indentation or quoting on that line",
        ) from None
    if not isinstance(data, dict):
        raise PipelineError(file, 1, "(file)", "a pipeline file must be a mapping", "start with 'name: ...'")
    lines: dict[tuple, int] = {}
    _line_map(node, (), lines)
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as e:
        _raise_validation(e, PipelineSpec, file, lines, ())
    loaded = LoadedSpec(spec, file, lines)
    _validate_stage_params(loaded)
    return loaded


def _validate_stage_params(loaded: LoadedSpec) -> None:
    from stages import all_stages

    registry = all_stages()
    for i, st in enumerate(loaded.spec.stages):
        if st.stage not in registry:
            raise loaded.error(("stages", i, "stage"), f"unknown stage '{st.stage}'", did_you_mean(st.stage, registry))
        params_model = registry[st.stage].Params
        try:
            params_model.model_validate(st.params)
        except ValidationError as e:
            _raise_validation(e, params_model, loaded.file, loaded.lines, ("stages", i, "params"))
