"""The ``compemb`` command line: thin subcommands, each calling one library function."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Sequence

from compemb.optim import OPTIMIZERS


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from compemb.data.preprocess import PreprocessOptions, parse_days, preprocess_criteo

    options = PreprocessOptions(
        max_index=args.max_index,
        min_count=args.min_count,
        vocab=args.vocab,
        strict=args.strict,
        **(parse_days(args.days) if args.days is not None else {}),
    )
    summary = preprocess_criteo(args.inputs, args.output_dir, options, progress=args.progress)
    rejected = sum(summary.rejected.values())
    print(
        f"wrote {summary.output_dir}: {summary.rows} from {summary.lines_read} lines "
        f"({rejected} rejected) in {summary.seconds:.1f} s, {summary.mb_per_s:.1f} MB/s"
    )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from compemb.data.synthetic import SynthOptions, generate_synthetic, parse_cardinalities

    if args.keep_cardinalities and args.numbering is not None:
        raise ValueError(f"--keep-cardinalities keeps the generator's ids; drop --numbering "
                         f"{args.numbering}")  # fmt: skip
    options = SynthOptions(
        rows=args.rows,
        cardinalities=parse_cardinalities(args.cardinalities),
        seed=args.seed,
        zipf=args.zipf,
        num_dense=args.num_dense,
        numbering="population" if args.keep_cardinalities else args.numbering or "first-seen",
    )
    losses = generate_synthetic(args.output_dir, options, progress=args.progress)
    print(
        f"wrote {args.output_dir}: {options.rows} rows, ids numbered {options.numbering}; test "
        f"log loss of the hidden model {losses['optimal_test_log_loss']:.5f}, of the base rate "
        f"{losses['constant_test_log_loss']:.5f}"
    )
    return 0


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    pre = sub.add_parser("preprocess", help="preprocess a raw dataset into a dataset folder")
    pre.add_argument("source", choices=["criteo"], help="input format")
    pre.add_argument("inputs", nargs="+", metavar="input",
                     help="Criteo TSV, plain or gzip: one file (Kaggle), or the day files in "
                          "order or their folder (Terabyte: day_0 ... day_23[.gz])")
    pre.add_argument("output_dir", help="dataset folder to create (must not exist)")
    pre.add_argument("--max-index", type=int, default=None, metavar="N",
                     help="take every categorical id modulo N (default: no cap)")
    pre.add_argument("--min-count", type=int, default=1, metavar="K",
                     help="categories seen fewer than K times share the bucket id 0 (default 1)")
    pre.add_argument("--days", default=None, metavar="N|A,B,...",
                     help="one input: number of equal-count days (default 7), or every day's "
                          "line count; several inputs are one day each")
    pre.add_argument("--vocab", choices=["all", "train"], default="all",
                     help="enumerate categories over all days (default, the reference) or the "
                          "train days only, unseen ones sharing the bucket id 0")
    pre.add_argument("--strict", action="store_true",
                     help="stop at the first bad line instead of rejecting it")
    pre.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: only on a terminal)")
    pre.set_defaults(func=_cmd_preprocess)

    syn = sub.add_parser("synth", help="write a planted synthetic dataset folder")
    syn.add_argument("output_dir", help="dataset folder to create (must not exist)")
    syn.add_argument("--rows", type=int, required=True, help="rows over all splits")
    syn.add_argument("--cardinalities", required=True, metavar="criteo-kaggle|LIST",
                     help="'criteo-kaggle' or comma-separated category counts")
    syn.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    syn.add_argument("--zipf", type=float, default=1.1, help="power-law exponent (default 1.1)")
    syn.add_argument("--num-dense", type=int, default=13, help="dense features (default 13)")
    syn.add_argument("--numbering", choices=["first-seen", "rank", "random"], default=None,
                     help="ids of the categories present, numbered by first appearance "
                          "(default, as preprocessing a log does), population rank, or a seeded "
                          "permutation; each cardinality is the number of ids present")
    syn.add_argument("--keep-cardinalities", action="store_true",
                     help="write the generator's ids with the requested cardinalities (for "
                          "memory and speed benchmarks at full size; most ids never occur)")
    syn.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: only on a terminal)")
    syn.set_defaults(func=_cmd_synth)


def _cmd_sizes(args: argparse.Namespace) -> int:
    from compemb.demo import run_sizes

    print(run_sizes(args.embedding_dim))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from compemb.demo import run_demo

    print(run_demo(args.out, trials=args.trials, workers=args.workers, progress=args.progress))
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    import shlex

    from compemb.experiments.pipeline import dataset_spec, default_out, run_named
    from compemb.experiments.report import format_table
    from compemb.experiments.runner import RESULT_FILES, Settings

    spec = dataset_spec(args.data)
    settings = Settings(
        dataset=spec, model=args.model, embedding_dim=args.embedding_dim,
        optimizer=args.optimizer, trials=args.trials, first_seed=args.seed,
        batch_size=args.batch_size, epochs=args.epochs, max_steps=args.steps,
        threads=args.threads, keep_checkpoints=args.keep_checkpoints, workers=args.workers,
        quantize=tuple(args.quantize or ()),
        **({} if args.lr_decay is None else {"lr_decay": args.lr_decay}),
    )  # fmt: skip
    out = args.out or default_out(spec, args.model)
    command = "compemb " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["experiment"] else None
    outcome = run_named(args.name, settings, out, progress=args.progress, command=command,
                        lines=args.lines, targets=args.targets)
    print(format_table(outcome.results))
    files = ", ".join([outcome.report.name, outcome.plot.name, *RESULT_FILES])
    print(f"\nwrote {outcome.folder}/ ({files}) in {outcome.seconds:.0f} s")
    return 0


def _add_demo_command(sub: argparse._SubParsersAction) -> None:
    from compemb.experiments.grids import EXPERIMENT_HELP
    from compemb.serving.precision import PRECISIONS

    demo = sub.add_parser("demo", help="the main job: every scheme trained on MovieLens-100k")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--trials", type=int, default=3, help="trials per variant (default 3)")
    demo.add_argument("--workers", type=int, default=2,
                      help="runs trained at once, one process each (default 2)")  # fmt: skip
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="progress bar (default: only on a terminal)")
    demo.set_defaults(func=_cmd_demo)

    sizes = sub.add_parser("sizes", help="rows, parameters and compression of every scheme")
    sizes.add_argument("--embedding-dim", type=int, default=16, help="D (default 16)")
    sizes.set_defaults(func=_cmd_sizes)

    names = "; ".join(f"{k}: {v}" for k, v in EXPERIMENT_HELP.items())
    exp = sub.add_parser("experiment", help="run one of the paper's experiments (resumable)",
                         description=f"Experiments: {names}.")  # fmt: skip
    exp.add_argument("name", help="fig4, fig5, fig6, fig7, table1, optimizers, init, demo or "
                                  "frontier")
    exp.add_argument("--data", nargs="+", default=["movielens"], metavar="SOURCE",
                     help="movielens (default), synthetic DIR or criteo DIR")
    exp.add_argument("--model", choices=["dlrm", "dcn"], default="dlrm")
    exp.add_argument("--trials", type=int, default=5, help="runs per variant (default 5)")
    exp.add_argument("--seed", type=int, default=0, help="seed of the first trial (default 0)")
    exp.add_argument("--out", help="output folder (default runs/experiments/DATA-MODEL)")
    exp.add_argument("--steps", type=int, default=None, metavar="N",
                     help="at most N training steps per run (quick runs)")
    exp.add_argument("--epochs", type=int, default=1)
    exp.add_argument("--lr-decay", type=float, default=None, metavar="SHARE",
                     help="train.lr_decay of every run (default 0.3; 0 reproduces the runs "
                          "written before the decay)")
    exp.add_argument("--batch-size", type=int, default=128)
    exp.add_argument("--embedding-dim", type=int, default=16)
    exp.add_argument("--optimizer", choices=["auto", *OPTIMIZERS], default="auto",
                     help="auto: the better one per operation (see the README)")
    exp.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads per run (default 1)")  # fmt: skip
    exp.add_argument("--workers", type=int, default=1,
                     help="runs trained at once, one process each (default 1)")  # fmt: skip
    exp.add_argument("--keep-checkpoints", action="store_true",
                     help="keep each finished run's checkpoint.pt")
    exp.add_argument("--lines", nargs="+", metavar="SERIES",
                     help="frontier only: these lines (e.g. hash 'qr mult' tt; default all)")
    exp.add_argument("--targets", nargs="+", type=float, metavar="X",
                     help="frontier only: these target compressions (default 2 4 16 60 250 1000)")
    exp.add_argument("--quantize", nargs="+", metavar="PRECISION",
                     choices=[p for p in PRECISIONS if p != "fp32"],
                     help="also serve every trained run with its tables in these precisions "
                          "(fp16 int8 int4), before its checkpoint is removed")
    exp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: only on a terminal)")
    exp.set_defaults(func=_cmd_experiment)


def _cmd_params(args: argparse.Namespace) -> int:
    import json

    from compemb.spec import EmbeddingSpec, setting_types
    from compemb.training import count_parameters, load_cardinalities

    spec = EmbeddingSpec(**{name: getattr(args, name) for name in setting_types()
                            if hasattr(args, name)})
    report = count_parameters(args.model, load_cardinalities(args.cardinalities), spec,
                              embedding_dim=args.embedding_dim, num_dense=args.num_dense,
                              optimizer=args.optimizer)  # fmt: skip
    if args.json:
        print(json.dumps(report))
    else:
        for part in ("total", "embedding", "dense"):
            print(f"{part:>9}: {report[part]:>13,} parameters {report[part + '_bytes']:>15,} bytes")
        if report["index_bytes"]:
            print(f"{'id maps':>9}: {report['index_bytes']:>41,} bytes")
        print(f"compression of the embeddings vs full tables: {report['compression_ratio']:.2f}x")
        if "budget" in report:
            chosen = ", ".join(f"{k}={v}" for k, v in report["fitted"].items())
            print(f"budget {report['budget']}: {chosen}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    from compemb.config import apply_overrides, load_config
    from compemb.training import resume, train

    overrides = list(args.set) + ([f"train.device={args.device}"] if args.device else [])
    if args.resume:
        if args.config or overrides or args.out:
            raise ValueError("--resume RUN_DIR continues a run with its saved config; drop "
                             "--config, --set, --device and --out")  # fmt: skip
        final = resume(args.resume)
    else:
        if not args.config:
            raise ValueError("give --config FILE (or --resume RUN_DIR)")
        config = apply_overrides(load_config(args.config), overrides)
        m = config.model
        out = args.out or (f"runs/{m.name}-{m.embedding.scheme}-{config.train.optimizer}-"
                           f"seed{config.train.seed}")  # fmt: skip
        final = train(config, out)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one rank reports
        print(json.dumps(final, indent=2))
    return 0


def _per_feature(items: Sequence[str]) -> dict[str, str]:
    """``--feature-precision NAME=PRECISION`` flags as a dict."""
    out = {}
    for item in items:
        name, sep, precision = item.partition("=")
        if not sep or not name or not precision:
            raise ValueError(f"--feature-precision {item!r}: expected FEATURE=PRECISION")
        out[name] = precision
    return out


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    if args.run_dir.endswith(".pt2"):
        from compemb.serving.runs import evaluate_program

        if args.quantize or args.feature_precision:
            raise ValueError(f"{args.run_dir} is an exported program, served as it was written"
                             f"; drop --quantize and --feature-precision")
        metrics = evaluate_program(args.run_dir, args.split)
    elif args.quantize:
        from compemb.serving.runs import evaluate_quantized

        metrics = evaluate_quantized(args.run_dir, args.quantize, args.split,
                                     per_feature=_per_feature(args.feature_precision))
    else:
        if args.feature_precision:
            raise ValueError("--feature-precision goes with --quantize")
        from compemb.training import evaluate_run

        metrics = evaluate_run(args.run_dir, args.split, device=args.device)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one rank reports
        print(json.dumps(metrics, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if args.quantize:
        from compemb.serving.runs import export_served

        print(export_served(args.run_dir, args.out, args.quantize,
                            per_feature=_per_feature(args.feature_precision)))
        return 0
    if args.feature_precision:
        raise ValueError("--feature-precision goes with --quantize")
    from compemb.training import export_run

    print(export_run(args.run_dir, args.out))
    return 0


def _add_quantize_flags(parser: argparse.ArgumentParser, what: str) -> None:
    from compemb.serving.precision import PRECISIONS

    parser.add_argument("--quantize", choices=list(PRECISIONS), default=None,
                        help=f"{what} with tables stored row-wise in this precision and looked "
                             f"up by FBGEMM's inference kernels (tables it would not shrink stay "
                             f"float32)")
    parser.add_argument("--feature-precision", action="append", default=[],
                        metavar="FEATURE=PRECISION",
                        help="another precision for one feature, by the dataset's name for it "
                             "(repeatable)")


def _flag_bool(text: str) -> bool:
    """A boolean flag's value: true or false."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def _add_spec_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of a flat spec (--scheme, --collisions, --hot, ...: the registered
    schemes' own and the shared ones), so a new scheme's settings need no edit here. A flag
    left out takes the scheme's default."""
    from compemb.spec import schemes, setting_types

    for name, annotation in setting_types().items():
        if name == "sparse":  # follows the optimizer; no effect on counts
            continue
        convert = {int: int, float: float, bool: _flag_bool}.get(
            next((a for a in typing.get_args(annotation) if a is not type(None)), annotation),
            str)
        more = f"; one of {', '.join(schemes())}" if name == "scheme" else ""
        if name == "budget":
            more = ("; a memory budget that chooses the scheme's size setting: a compression "
                    "ratio (16x), parameters (2e6) or bytes (200MB, id maps counted)")
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=convert,
                            default=argparse.SUPPRESS, help=f"the spec's {name}{more}")


def _add_training_commands(sub: argparse._SubParsersAction, spec_flags: bool) -> None:
    par = sub.add_parser("params", help="parameter counts and bytes of a model (nothing allocated)")
    par.add_argument("--model", choices=["dlrm", "dcn"], default="dlrm")
    par.add_argument("--cardinalities", default="criteo-kaggle", metavar="criteo-kaggle|FILE")
    if spec_flags:  # they import the spec, and so torch: only when params runs
        _add_spec_flags(par)
    par.add_argument("--embedding-dim", type=int, default=16)
    par.add_argument("--num-dense", type=int, default=13)
    par.add_argument("--optimizer", choices=list(OPTIMIZERS), default=None,
                     help="also count this optimizer's state")
    par.add_argument("--json", action="store_true", help="print one JSON object")
    par.set_defaults(func=_cmd_params)

    tr = sub.add_parser("train", help="train a model from a config (resumable, torchrun-ready)")
    tr.add_argument("--config", help="YAML or TOML config file")
    tr.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value, type-checked (repeatable), e.g. "
                         "model.embedding.collisions=60")  # fmt: skip
    tr.add_argument("--out", help="run folder (default runs/MODEL-SCHEME-OPTIMIZER-seedN)")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")
    tr.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="metrics of a run folder's last checkpoint (under "
                        "torchrun, a sharded run evaluated sharded), or of an exported "
                        "program (.pt2)")  # fmt: skip
    ev.add_argument("run_dir", help="run folder, or a program written by export --quantize")
    ev.add_argument("--split", choices=["test", "val"], default="test")
    ev.add_argument("--device", choices=["cpu", "cuda"], default=None)
    _add_quantize_flags(ev, "serve the model")
    ev.set_defaults(func=_cmd_evaluate)

    ex = sub.add_parser("export", help="a run's last checkpoint as one weights-only file of "
                        "the unsharded model, or with --quantize as one torch.export program "
                        "that serves probabilities")  # fmt: skip
    ex.add_argument("run_dir")
    ex.add_argument("out", help="the file to write: {'model', 'config'}, or a .pt2 program "
                                "with --quantize")
    _add_quantize_flags(ex, "write a program")
    ex.set_defaults(func=_cmd_export)


def _build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compemb",
        description="Compositional embeddings with complementary partitions.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each subcommand registers itself below with set_defaults(func=handler).
    _add_data_commands(sub)
    _add_demo_command(sub)
    words = sys.argv[1:] if argv is None else list(argv)
    _add_training_commands(sub, spec_flags="params" in words)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``compemb`` console script; returns the exit status."""
    parser = _build_parser(argv)
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"compemb {args.command}: error: {err}", file=sys.stderr)
        status = 2
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, the interpreter's teardown after TorchRec and gloo sometimes aborts
        # ("terminate called without an active exception", about 1 run in 6 here) once the
        # work is done and its files are written: leave with the command's own status.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
