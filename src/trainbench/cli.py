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

    from trainbench import report, results, runner

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        run_cfg = _to_run_config(cfg)
        plan = runner.prepare(run_cfg, _choices_model(hc.runtime.choices))
    except ConfigError as err:
        if not multirun:
            raise SystemExit(_fail(str(err)))
        # In a sweep, one bad combination is recorded as failed and the sweep goes on.
        name = "failed_" + "_".join(o.replace("/", "-").replace("=", "-")
                                    for o in hc.overrides.task)[:150]
        results.write_record({"schema": results.SCHEMA, "run_id": name, "status": "failed",
                              "cause": f"ConfigError: {err}", "overrides": list(hc.overrides.task)},
                             cfg.results_dir, name)
        print(f"trainbench: run {hc.job.num} failed before starting: {err}", file=sys.stderr)
        return
    record, path = runner.execute(plan)
    report.print_table([record])
    print(f"record: {path}")
    if record["status"] != "ok" and not multirun:
        print(f"trainbench: run {record['status']}: {record['cause']}", file=sys.stderr)
        raise SystemExit(EXIT_RUN_FAILED)


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


def check_overrides(overrides: list[str]) -> None:
    """Compose and validate every run the overrides describe; raise ConfigError on the first
    bad one. Runs nothing."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from trainbench import config

    config.register()
    GlobalHydra.instance().clear()
    try:
        combos = _combinations(overrides)
    except Exception as err:
        raise ConfigError(_describe_hydra_error(err)) from None
    with initialize_config_module("trainbench.configs", version_base="1.3"):
        for combo in combos:
            try:
                cfg = compose("config", overrides=combo)
            except Exception as err:
                raise ConfigError(_describe_hydra_error(err)) from None
            config.validate(_to_run_config(cfg))
    GlobalHydra.instance().clear()


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
    """Compare the records under PATH... (files, folders, globs)."""
    parser = argparse.ArgumentParser(prog="trainbench report", description=cmd_report.__doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table instead")
    args = parser.parse_args(argv)
    from trainbench import report, results

    records, skipped = results.load_records(args.paths)
    for note in skipped:
        print(f"skipped {note}", file=sys.stderr)
    if not records:
        return _fail("no trainbench records found under " + " ".join(args.paths))
    if args.markdown:
        print(report.markdown_table(records))
    else:
        report.print_table(records)
    return 0


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "backends": cmd_backends,
    "report": cmd_report,
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
