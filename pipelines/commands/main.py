"""``longforge``: run, validate, list stages, build corpora, query the catalog.

Exit codes: 0 success, 2 usage or validation error, 1 run failure.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

from pipelines.commands import small_commands
from pipelines.commands.parser import UsageError, build_parser
from pipelines.spec import PipelineError

#: True when longforge runs as a command (its arguments from the command line), False when called
#: from Python with an argument list (tests, notebooks: a memory:// store outlives the call there).
_COMMAND_LINE = False


def main(argv: list[str] | None = None) -> int:
    global _COMMAND_LINE
    _COMMAND_LINE = argv is None
    from pipelines.storage.redaction import install_log_redaction, install_stderr_redaction, remember_secrets

    install_log_redaction()
    install_stderr_redaction()  # error messages and tracebacks too
    remember_secrets(list(argv if argv is not None else sys.argv[1:]))  # --beam-arg=--hftoken=... by value
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # like Ctrl-C: runs and scoring jobs end 'interrupted'
        # Ctrl-C works even when the process started with SIGINT ignored (a background job of a
        # script, a test runner's worker): Python would otherwise keep ignoring it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    try:
        return _dispatch(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 143 if type(e).__name__ == "Terminated" else 130
    except BrokenPipeError:  # `longforge stages | head`
        return 0
    except FileNotFoundError as e:  # a missing catalog, input or file named on the command line
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last net: a message, never a traceback
        from catalog import CatalogUnusable

        if isinstance(e, CatalogUnusable):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if os.environ.get("LONGFORGE_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {_one_paragraph(e)}", file=sys.stderr)
        print("(not a failure longforge foresaw: LONGFORGE_DEBUG=1 shows where it happened; please report it)",
              file=sys.stderr)
        return 1


def _one_paragraph(e: Exception) -> str:
    text = " ".join(str(e).split()) or repr(e)
    return text if len(text) <= 600 else text[:600] + " ..."


def _dispatch(args) -> int:
    if args.command == "validate":
        return _validate(args)
    if args.command == "run":
        return _run(args)
    if args.command == "stages":
        return _stages(args)
    if args.command == "corpus":
        return small_commands.corpus(args)
    if args.command == "catalog":
        return small_commands.catalog(args)
    if args.command == "models":
        return small_commands.models(args)
    if args.command == "select":
        return small_commands.select(args)
    if args.command == "report":
        return small_commands.report(args)
    if args.command == "push":
        return small_commands.push(args)
    if args.command == "longbench-write":
        from pipelines.commands.longbench_write_command import longbench_write

        return longbench_write(args)
    if args.command == "eval":
        from pipelines.commands import eval_command

        return {"score": eval_command.eval_score, "import": eval_command.eval_import,
                "predict": eval_command.eval_predict}[args.eval_command](args)
    if args.command == "score":
        from pipelines.commands.score_command import score

        return score(args)
    raise UsageError(f"unknown command {args.command}")


def _validate(args) -> int:
    from pipelines.engine.plan import resolve_stages
    from pipelines.spec import load_pipeline

    loaded = load_pipeline(args.pipeline)
    stages = resolve_stages(loaded)
    print(f"{args.pipeline}: ok ({len(stages)} stages)")
    for s in stages:
        print(f"  {s.label:<16} {s.shape:<22} {s.input_schema.ref} -> {s.output_schema.ref}")
    return 0


def _run(args) -> int:
    from catalog import Catalog
    from pipelines.driver import run_pipeline
    from pipelines.engine.card import summary_table
    from pipelines.engine.plan import build_plan
    from pipelines.engine.progress import Progress
    from pipelines.spec import load_pipeline

    if args.api_key_env:  # read by the generation stages' validation, here and in the workers
        from gpu_jobs.generate import ALLOW_KEY_ENV, HUB_TOKEN_VARS

        if args.api_key_env in HUB_TOKEN_VARS:
            raise UsageError(f"--api-key-env {args.api_key_env}: a Hugging Face token is never sent to a "
                             "generation server")
        os.environ[ALLOW_KEY_ENV] = args.api_key_env
    loaded = load_pipeline(args.pipeline)
    plan = build_plan(loaded, inputs=args.input or None, output=args.output, seed=args.seed)
    from pipelines import storage

    if _COMMAND_LINE and storage.is_ephemeral(plan.output_dir):
        raise UsageError(f"output '{plan.output_dir}' is a store that ends with this process: the records would be "
                         "gone when the command exits -> give a folder or a lasting store (s3://, gs://, hf://)")
    runner = args.runner or plan.spec.runner.name
    workers = args.workers or plan.spec.runner.workers
    beam_args = list(plan.spec.runner.beam_args) + list(args.beam_args)
    if args.ray_address is not None:
        if runner != "ray":
            raise UsageError(f"--ray-address is for --runner ray (this run's runner is '{runner}')")
        _check_ray_address(args.ray_address)
        beam_args.append(f"--ray-address={args.ray_address}")
    if args.dry_run:
        desc = plan.describe()
        from pipelines.storage.redaction import redact

        desc.update({"runner": runner, "workers": workers, "beam_args": beam_args,
                     "steps": plan.where(runner, workers)})
        if runner == "beam":  # the jobs as Beam (Dataflow's runner, given --runner=DataflowRunner) builds them
            from pipelines.runners.beam import render_jobs
            from pipelines.runners.beam_setup import worker_dependencies

            desc["beam_worker_options"] = worker_dependencies(beam_args)
            desc["beam_jobs"] = render_jobs(plan, workers, beam_args)
        print(json.dumps(redact(desc), indent=2, ensure_ascii=False))
        return 0
    from pipelines.engine.output_guard import OutputFolderError, check_output_folder

    try:
        check_output_folder(plan.output_dir, plan.fingerprint, args.overwrite)
    except OutputFolderError as e:
        raise UsageError(str(e)) from None
    catalog = Catalog(args.catalog)
    catalog.check_version()  # a catalog this longforge cannot write is refused before any work
    try:
        result = run_pipeline(plan, runner=runner, workers=workers, beam_args=beam_args, catalog=catalog,
                              progress=Progress(enabled=not args.quiet), overwrite=args.overwrite)
    except KeyboardInterrupt as e:
        print(f"{'terminated' if type(e).__name__ == 'Terminated' else 'interrupted'}: the catalog records the run "
              "as 'interrupted'; rerun the same command to resume", file=sys.stderr)
        return 143 if type(e).__name__ == "Terminated" else 130
    except Exception as e:  # noqa: BLE001 - the run failed; say why and exit 1
        print(f"run failed: {type(e).__name__}: {e}", file=sys.stderr)
        if os.environ.get("LONGFORGE_DEBUG"):
            raise
        return 1
    print(summary_table(result.stats))
    print()
    print(f"run       {result.run_id} ({runner}, {result.seconds:.1f} s)")
    print(f"output    {result.output_dir} ({result.n_records:,} records)")
    print(f"rejects   {result.n_removed:,} rejected, dropped or truncated (catalog table 'rejects')")
    print(f"content   {result.fingerprint}")
    print(f"catalog   {catalog.path}")
    return 0


def _check_ray_address(address: str) -> None:
    """A cluster address that cannot be reached fails before any work (Ray itself retries for
    minutes): ``auto`` and ``ray://`` addresses are left to Ray, ``host:port`` must answer."""
    import socket

    if address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--ray-address {address!r}: give the head's host:port (ray start --head prints it), "
                         "'auto' on a machine of the cluster, or a ray:// address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise UsageError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e}) -> start one "
                         "with `ray start --head`, or leave --ray-address out to start one for the run") from None


def _terminate(signum, frame):
    from pipelines.engine.interrupts import Terminated, request_stop

    request_stop()
    raise Terminated()


def _stages(args) -> int:
    from stages import all_stages

    registry = all_stages()
    names = [args.name] if args.name else list(registry)
    if args.name and args.name not in registry:
        from pipelines.spec import did_you_mean

        raise UsageError(f"unknown stage '{args.name}': {did_you_mean(args.name, registry)}")
    from schemas import TEXT_RECORD

    for name in names:
        cls = registry[name]
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        out = cls().output_schema(TEXT_RECORD)
        added = [f.name for f in out.fields if f.name not in TEXT_RECORD.field_map()]
        print(f"{name}  [{cls.shape}]  {doc}")
        print(f"    reads:  {cls.input_schema.ref} (needs {', '.join(f.name for f in cls.input_schema.fields)})")
        print("    writes: what it reads" + (f" + {', '.join(added)}" if added else ""))
        for fname, field in cls.Params.model_fields.items():
            print(f"    {fname}: {_type_text(field.annotation)} = {field.default!r}  {field.description or ''}")
        print()
    return 0


def _type_text(annotation) -> str:
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) if not typing.get_args(annotation) else \
        str(annotation).replace("typing.", "")


if __name__ == "__main__":
    sys.exit(main())
