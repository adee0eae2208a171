"""The `trainbench` command.

`trainbench [overrides]` runs one benchmark (Hydra; `-m` for a sweep); `trainbench backends` lists
the backends and whether they can run here; `trainbench report PATH...` compares records.
Every user error prints one line naming the bad value and what is allowed, and exits 2, before
any work starts.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import Any, Callable, Sequence

from trainbench.errors import ConfigError

EXIT_USAGE = 2
EXIT_RUN_FAILED = 1
EXIT_REGRESSION = 3


def _fail(message: str) -> int:
    print(f"trainbench: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# ---- run (Hydra) -------------------------------------------------------------------------------

def _to_run_config(cfg: Any) -> Any:
    """DictConfig -> RunConfig object; a ConfigError raised while building it is surfaced."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_object(cfg)
    except Exception as err:  # OmegaConf wraps errors raised in __post_init__
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, ConfigError):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise ConfigError(_describe_hydra_error(err)) from None


def _choices_model(choices: Any) -> str:
    return str(choices.get("model") or "custom")


def _run_job(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from trainbench import launch, report, results, runner, sweep

    launch.apply_slurm_env()  # a SLURM task per device becomes a torch.distributed rank
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        try:
            plan = runner.prepare(_to_run_config(cfg), _choices_model(hc.runtime.choices))
        except ConfigError as err:
            raise SystemExit(_fail(str(err)))
        record, path = runner.execute(plan)
        if path is None:  # not the primary rank of a multi-process run
            return
        report.print_table([record])
        print(f"record: {path}")
        if record["status"] != "ok":
            print(f"trainbench: run {record['status']}: {record['cause']}", file=sys.stderr)
            raise SystemExit(EXIT_RUN_FAILED)
        return

    # A sweep: one bad run is recorded with its cause and the sweep goes on.
    sweep_dir = hc.sweep.dir
    try:
        plan = runner.prepare(_to_run_config(cfg), _choices_model(hc.runtime.choices))
    except ConfigError as err:
        name = "failed_" + "_".join(o.replace("/", "-").replace("=", "-")
                                    for o in hc.overrides.task)[:150]
        results.write_record({"schema": results.SCHEMA, "run_id": name, "status": "failed",
                              "cause": f"ConfigError: {err}", "overrides": list(hc.overrides.task)},
                             cfg.results_dir, name)
        sweep.journal(sweep_dir, {"run_id": name, "status": "failed", "cause": str(err)})
        print(f"trainbench: run {hc.job.num} failed before starting: {err}", file=sys.stderr)
        return
    reason = sweep.skip_reason(plan)
    if reason:
        sweep.journal(sweep_dir, {"run_id": plan.run_id, "status": "skipped", "cause": reason})
        print(f"skipped {plan.run_id}: {reason}")
        return
    record = sweep.run_isolated(plan) if plan.cfg.sweep.isolate else runner.execute(plan)[0]
    sweep.journal(sweep_dir, {"run_id": plan.run_id, "status": record["status"],
                              "cause": record.get("cause")})
    report.print_table([record])


def _hydra_main() -> None:
    import hydra

    from trainbench import config

    config.register()
    hydra.main(config_path="pkg://trainbench.configs", config_name="config",
               version_base="1.3")(_run_job)()


# Hydra flags that change where the config comes from: then Hydra alone validates.
_SOURCE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
# Hydra flags whose value is the next argument (--info's is optional and never has "=").
_VALUE_FLAGS = {"--experimental-rerun", "--package", "-p", "--cfg", "-c"}
_OPTIONAL_VALUE_FLAGS = {"--info", "-i"}


def _task_overrides(argv: Sequence[str]) -> list[str] | None:
    """The overrides in argv that configure the run (not Hydra's own flags or hydra.* keys);
    None if argv changes the config source."""
    overrides: list[str] = []
    args = iter(enumerate(argv))
    for i, arg in args:
        if arg.split("=")[0] in _SOURCE_FLAGS:
            return None
        if arg in _VALUE_FLAGS or (arg in _OPTIONAL_VALUE_FLAGS and i + 1 < len(argv)
                                   and "=" not in argv[i + 1]):
            next(args, None)
            continue
        if arg.startswith("-"):
            continue
        key = arg.lstrip("+~").split("=")[0]
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        overrides.append(arg)
    return overrides


_MAX_COMBINATIONS = 256


def _combinations(overrides: list[str]) -> list[list[str]]:
    """Every run a sweep's overrides expand to (each sweep value alone beyond a cap)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    axes: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    total = 1
    for axis in axes:
        total *= len(axis)
    if total <= _MAX_COMBINATIONS:
        return [list(c) for c in itertools.product(*axes)]
    firsts = [axis[0] for axis in axes]
    return [firsts[:i] + [v] + firsts[i + 1:] for i, axis in enumerate(axes) for v in axis]


def compose_run_configs(combos: list[list[str]]) -> list[Any]:
    """RunConfig objects for each list of overrides, validated; ConfigError on the first bad one.
    Runs nothing."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from trainbench import config

    config.register()
    GlobalHydra.instance().clear()
    out = []
    try:
        with initialize_config_module("trainbench.configs", version_base="1.3"):
            for combo in combos:
                try:
                    cfg = compose("config", overrides=combo)
                except Exception as err:
                    raise ConfigError(_describe_hydra_error(err)) from None
                run_cfg = _to_run_config(cfg)
                config.validate(run_cfg)
                out.append(run_cfg)
    finally:
        GlobalHydra.instance().clear()
    return out


def check_overrides(overrides: list[str]) -> None:
    """Compose and validate every run a (possibly sweeping) command line describes."""
    try:
        combos = _combinations(overrides)
    except Exception as err:
        raise ConfigError(_describe_hydra_error(err)) from None
    compose_run_configs(combos)


def _describe_hydra_error(err: BaseException) -> str:
    """One line from a Hydra/OmegaConf composition error: which key, what was wrong, what fits."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options:
            group, _, value = e.missing_cfg_file.rpartition("/")
            return (f"{group or 'config'}={value} is not a known option; choose one of: "
                    + ", ".join(e.options))
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            first = str(e.msg).strip().splitlines()[0]
            if isinstance(e, (ConfigAttributeError, ConfigKeyError)):
                parent = e.full_key.rpartition(".")[0] or "the config"
                allowed = list(getattr(e.object_type, "__dataclass_fields__", {}))
                hint = f"; {parent} has: {', '.join(allowed)}" if allowed else ""
                return f"{e.full_key} is not a config key{hint}"
            return f"{e.full_key}: {first}"
        if isinstance(e, OverrideParseException):
            return f"could not parse override {e.override!r}: {e.message.strip().splitlines()[0]}"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---- subcommands ---------------------------------------------------------------------------------

def cmd_backends(argv: Sequence[str]) -> int:
    """List every registered backend, whether it can run here, and why not."""
    argparse.ArgumentParser(prog="trainbench backends", description=cmd_backends.__doc__
                            ).parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from trainbench import registry

    table = Table(title="trainbench backends")
    for column in ("backend", "available", "devices", "precisions", "why / why not"):
        table.add_column(column)
    for name in registry.names():
        try:
            cls = registry.get(name)
            a = cls.availability()
            table.add_row(name, "yes" if a.ok else "no", a.devices, ", ".join(cls.precisions),
                          a.reason)
        except Exception as err:  # a broken third-party plugin must not hide the others
            table.add_row(name, "no", "", "", f"failed to load: {type(err).__name__}: {err}")
    Console(width=140).print(table)
    return 0


def cmd_report(argv: Sequence[str]) -> int:
    """Compare the records under PATH... (files, folders, globs): one row per configuration,
    repeats grouped (median and spread), on one FLOP convention."""
    parser = argparse.ArgumentParser(prog="trainbench report", description=cmd_report.__doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--csv", metavar="FILE", help="write the grouped comparison as CSV")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument("--html", metavar="FILE",
                        help="write one self-contained HTML page: tables, notes, plots, and each "
                             "row's environment and config")
    parser.add_argument("--columns", metavar="LIST",
                        help="comma-separated columns of the table, or 'all' (default: "
                             "accelerator,devices,backend,model,precision,batch,seq,runs,"
                             "tokens/s,spread,MFU,MAMFU,memory)")
    parser.add_argument("--runs", action="store_true", help="also list every run")
    parser.add_argument("--attention", choices=["causal", "full"], default="causal",
                        help="FLOP convention every record is put on (default: causal)")
    parser.add_argument("--costs", metavar="FILE",
                        help="prices and board power (default: the shipped configs/costs.yaml)")
    parser.add_argument("--baseline", nargs="+", metavar="PATH",
                        help="earlier records to compare with; regressions are flagged")
    parser.add_argument("--noise-k", type=float, default=2.0,
                        help="a regression is a drop beyond k x the repeats' noise (default 2)")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit with status 3 if any regression is flagged (for CI)")
    args = parser.parse_args(argv)
    if args.noise_k <= 0:
        raise ConfigError(f"--noise-k={args.noise_k} must be positive")
    import pandas as pd

    from trainbench import compile_report, plots, report, report_html, results

    columns = report.select_columns(args.columns)

    def load(paths: Sequence[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any,
                                            list[str]]:
        """Compiled plans, measured records, their frame and notes (read once)."""
        records, skipped = results.load_records(paths)
        for note in skipped:
            print(f"skipped {note}", file=sys.stderr)
        plans, records = compile_report.split(records)
        if not records and not plans:
            raise ConfigError("no trainbench records found under " + " ".join(paths))
        if not records:
            return plans, records, None, []
        df, notes = report.to_convention(report.frame(records), args.attention)
        return plans, records, df, notes + report.peak_notes(df)

    costs = report.load_costs(args.costs)
    plans, records, df, notes = load(args.paths)
    if plans:  # compiled plans: their own table, never among the measured runs below
        shown_plans = compile_report.frame(plans)
        if args.markdown:
            print(report.markdown(shown_plans) + "\n")
        else:
            report.print_frame(shown_plans, compile_report.TITLE)
    title = f"trainbench report ({args.attention} attention FLOPs)"
    if not records:
        if args.html:  # a page of compiled plans alone
            empty = pd.DataFrame()
            page = report_html.Page(title, [], empty, empty, plans=plans)
            print(f"wrote {report_html.write(page, args.html)}")
        return 0
    notes += report_html.unshown_notes(df)
    grouped = report.add_costs(report.group(df), costs)
    shown = report.display(grouped, columns)
    failed = report.failures(df)
    if args.markdown:
        print(report.markdown(shown))
        if not failed.empty:
            print("\n" + report.markdown(failed.fillna("")))
    else:
        report.print_frame(shown, title)
        if not failed.empty:
            report.print_frame(failed.fillna(""), "runs that did not finish", width=120)
        if args.runs:
            report.print_table(records, "every run")
    for note in notes:
        print(f"note: {note}")
    if args.csv:
        grouped.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    figures = plots.figures(df, grouped) if (args.plots or args.html) else {}
    if args.plots:
        for path in plots.save(figures, args.plots):
            print(f"wrote {path}")
    if args.html:
        page = report_html.Page(title, records, df, grouped, columns if args.columns else
                                tuple(report.TABLE_COLUMNS), notes, figures, plans)
        print(f"wrote {report_html.write(page, args.html)}")
    plots.close(figures)
    if args.baseline:
        _, _, base_df, _ = load(args.baseline)
        if base_df is None:
            raise ConfigError("--baseline: only compiled plans under " + " ".join(args.baseline)
                              + "; a baseline needs measured runs")
        cmp = report.compare_baseline(grouped, report.group(base_df), args.noise_k)
        if cmp.empty:
            print("baseline: no configuration in common with the current records")
            return 0
        regressions = cmp[cmp["regression"]]
        view = cmp.assign(baseline=[f"{x:.4g}" for x in cmp["baseline"]],
                          current=[f"{x:.4g}" for x in cmp["current"]],
                          change=[f"{100 * x:+.2f}%" for x in cmp["change"]],
                          threshold=[f"±{100 * x:.2f}%" for x in cmp["threshold"]])
        if args.markdown:
            print(report.markdown(view))
        else:
            report.print_frame(view, "against the baseline")
        print(f"baseline: {len(regressions)} regression(s) beyond {args.noise_k:g} x noise")
        if len(regressions) and args.fail_on_regression:
            return EXIT_REGRESSION
    return 0


def cmd_parity(argv: Sequence[str]) -> int:
    """Compare a backend with the reference backend: step-0 loss and gradients, and the loss
    after --steps AdamW steps, from the same weights and batches (trainbench.parity)."""
    parser = argparse.ArgumentParser(prog="trainbench parity", description=cmd_parity.__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. backend=jax model=tiny")
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise ConfigError(f"--steps={args.steps} must be at least 1")
    from rich.console import Console
    from rich.table import Table

    from trainbench import parity, registry

    [cfg] = compose_run_configs([args.overrides])
    name = registry.resolve_auto() if cfg.backend.name == "auto" else cfg.backend.name
    cls = registry.get(name)
    if cfg.backend.name == "auto":
        cfg.backend = cls.config_class(name=name)
    available = cls.availability()
    if not available.ok:
        raise ConfigError(f"backend={name} cannot run here: {available.reason}")
    rep = parity.compare_by_name(cfg.backend, cfg.model, cfg.precision, cfg.optim,
                                 cfg.train.batch_size, cfg.train.seq_len, args.steps, cfg.seed)
    table = Table(title=f"parity: {name} vs reference ({cfg.precision.name})")
    for column in ("quantity", "reference", name, "relative error", "tolerance", "ok"):
        table.add_column(column)
    for key, tol in rep.tolerances.items():
        err = rep.errors[key]
        ref = rep.reference.get(key)
        cand = rep.candidate.get(key)
        label = {"loss_step0": "loss at step 0", "grads_step0": "gradients at step 0",
                 "loss_after_steps": f"loss after {args.steps} steps"}[key]
        table.add_row(label,
                      "-" if ref is None else f"{ref:.6f}", "-" if cand is None else f"{cand:.6f}",
                      f"{err:.2e}", f"{tol:.0e}", "yes" if err <= tol else "NO")
    Console(width=140).print(table)
    worst = sorted(rep.grad_errors.items(), key=lambda kv: -kv[1])[:3]
    print("largest per-parameter gradient errors: "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst))
    print("PASS" if rep.passed else "FAIL: " + "; ".join(rep.failures()))
    return 0 if rep.passed else EXIT_RUN_FAILED


def _preset_name(model_cfg: Any) -> str:
    """The preset a composed model config is, or "custom" when overrides changed it."""
    from trainbench import model

    return next((n for n in model.preset_names() if model.preset(n) == model_cfg), "custom")


def cmd_compile(argv: Sequence[str]) -> int:
    """Compile the step a run would execute for a target, without running it: does it fit, what
    XLA counts, what it communicates (trainbench.compile). Configured like a run, plus
    target=local|tpu:<topology> and search=none|batch; writes a record with status compiled."""
    parser = argparse.ArgumentParser(prog="trainbench compile", description=cmd_compile.__doc__)
    parser.add_argument("overrides", nargs="*",
                        help="target=tpu:v5e:2x2 [search=batch] and run overrides, e.g. "
                             "model=llama3_8b precision=bf16 backend.fsdp=4")
    args = parser.parse_args(argv)
    own = {"target": None, "search": "none"}
    overrides = []
    for arg in args.overrides:
        key, eq, value = arg.partition("=")
        if eq and key in own:
            own[key] = value
        else:
            overrides.append(arg)
    if own["target"] is None:
        raise ConfigError("trainbench compile needs target=local or target=tpu:<topology> "
                          "(e.g. target=tpu:v5e:2x2)")
    from trainbench import compile as compile_lib
    from trainbench import compile_report, registry, report, results

    target = compile_lib.parse_target(own["target"])
    compile_lib.check_compiler(target)
    [cfg] = compose_run_configs([overrides])
    if cfg.backend.name == "auto":
        cfg.backend = registry.get("jax").config_class(name="jax")
    if cfg.backend.name != "jax":
        raise ConfigError(f"backend={cfg.backend.name}: trainbench compile builds the jax "
                          "backend's step; use backend=jax")
    from trainbench.backends.jax import aot

    versions = registry.get("jax").versions()
    if target.kind == "tpu":
        from importlib import metadata

        versions["libtpu"] = metadata.version("libtpu")
    record = compile_lib.plan(cfg, _preset_name(cfg.model), target, own["search"], aot, versions)
    path = results.write_record(record, cfg.results_dir, record["run_id"])
    if record["status"] != compile_lib.STATUS:
        print(f"trainbench: compile failed: {record['cause']}", file=sys.stderr)
        print(f"record: {path}")
        return EXIT_RUN_FAILED
    report.print_frame(compile_report.frame([record]), compile_report.TITLE)
    for probe in (record["compile"].get("search") or {}).get("probes", []):
        print(f"probe batch {probe['batch_size']}: fits={probe['fits']}")
    print(f"record: {path}")
    return 0


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "backends": cmd_backends,
    "report": cmd_report,
    "parity": cmd_parity,
    "compile": cmd_compile,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in SUBCOMMANDS:
            raise SystemExit(SUBCOMMANDS[args[0]](args[1:]))
        overrides = _task_overrides(args)
        if overrides is not None and not {"--help", "-h", "--hydra-help"} & set(args):
            check_overrides(overrides)
    except ConfigError as err:
        raise SystemExit(_fail(str(err))) from None
    sys.argv = [sys.argv[0], *args]
    _hydra_main()


if __name__ == "__main__":
    main()
