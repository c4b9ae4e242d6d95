"""`reportgen` command line: thin over the Python API. torch is imported only by commands that need it."""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import click

from . import progress as progress_bars
from .errors import ConfigWarning, EveryRank, ReportgenError, Terminated

INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)
TERMINATED = 143  # 128 + SIGTERM
RANK_GRACE = 5  # seconds a torchrun rank other than 0 waits, on an error all ranks share, for rank 0 to say it
# warnings raised inside these packages are about their own future or internals: nothing a user of
# reportgen can act on (torchvision's GoogLeNet "default weight initialization" FutureWarning, say)
LIBRARY_WARNINGS = r"(torch|torchvision)(\.|$)"


class _Progress:
    def __init__(self, quiet: bool, verbose: bool):
        self.quiet, self.verbose, self.start = quiet, verbose, time.perf_counter()

    def log(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"[{time.perf_counter() - self.start:6.1f}s] {message}", err=True)

    def detail(self, message: str) -> None:
        if self.verbose and not self.quiet:
            click.echo(message, err=True)


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _fail(message: str, config=None) -> None:
    """Exit 2 with one message; a loaded `config` adds where the key it names is written."""
    click.echo(f"error: {config.locate(message) if config is not None else message}", err=True)
    sys.exit(2)


def _writing(what: str, out: str, make: Callable[[], Path]) -> Path:
    """`make()`; bad input or a failed write is one message and exit 2."""
    try:
        return make()
    except ReportgenError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"writing {what} to {out} failed: {exc.strerror or exc}")


def _load(config_path: str, overrides: tuple[str, ...], out: str | None = None, save_arrays: bool = False):
    from .config import load_config

    config = load_config(config_path, overrides)  # --set paths resolve against the current folder
    output = config.output
    if out is not None:
        output = dataclasses.replace(output, dir=Path(out).resolve())
    if save_arrays:
        output = dataclasses.replace(output, save_arrays=True)
    return dataclasses.replace(config, output=output)


def _untrusted(ctx, param, value: bool) -> bool:
    if value:  # an environment variable: torchrun's processes and the model loader see it too
        os.environ["REPORTGEN_UNTRUSTED"] = "1"
    return value


_untrusted_option = click.option(
    "--untrusted", is_flag=True, expose_value=False, callback=_untrusted,
    help="The config (or its model files) came from someone else: refuse everything that would run their code "
         "(a model.factory, a TorchScript file, trust_checkpoint). Also $REPORTGEN_UNTRUSTED=1.")

_set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config key, e.g. --set model.name=resnet50 (repeatable). A relative path given here "
         "resolves against the current folder; paths written in the config file resolve against its folder.")


def _tracker_imported() -> bool:
    from .registry import TRACKERS

    # a command that read no config (`--help`, `init`) attached nothing: its trackers need not be looked for
    return TRACKERS.loaded and any(tracker.package in sys.modules for tracker in TRACKERS)


def _show_warning(show: Callable) -> Callable:
    """`warnings.showwarning` that prints a config warning as one line, `warning: <message>`."""

    def shown(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            show(message, category, filename, lineno, file, line)

    return shown


def _quiet_trackers() -> None:
    """Trackers' INFO lines ("Creating initial MLflow database tables...") are not ours to print; `build -v`
    keeps them. MLflow sets its loggers' level from $MLFLOW_LOGGING_LEVEL when it is imported (a user's
    choice there stands), and here when it was imported already."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if "mlflow" in sys.modules:
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())


def _other_rank() -> bool:
    """Whether torchrun started this process as a rank other than 0 (which speaks for all)."""
    return int(os.environ.get("RANK", "0")) > 0


def _terminate(signum, frame):
    raise Terminated


def _on_sigterm(handler):
    """Install `handler` for SIGTERM; returns the one it replaces (None off the main thread, where it cannot)."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _threads_for_free_cores() -> None:
    """Beside a busy process, torch's OpenMP threads that spin-wait between ops wait on each other: a build on 2
    threads took 3x as long as on one. So when other processes keep cores running as the build starts (the
    fewest of five samples of Linux's `procs_running`, 10 ms apart: one that merely passes by does not count),
    torch gets as many threads as cores are left free, and they wait passively. On idle cores torch keeps its
    own choice (all cores, spinning: passive waiting there cost 0-35 %). Values the user set stand (README,
    "Threads")."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    running = []
    for _ in range(5):
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                running.append(next(int(line.split()[1]) for line in stat if line.startswith("procs_running")))
        except (OSError, StopIteration, ValueError, IndexError):
            return  # not Linux: torch's own choice
        time.sleep(0.01)
    free = max(1, cores - (min(running) - 1))  # this process is one of the running ones
    if free < cores:
        os.environ["OMP_NUM_THREADS"] = str(free)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _Main(click.Group):
    """Every command: library warnings a user cannot act on stay silent (ours show); Ctrl-C exits 130 with
    one line instead of click's "Aborted!" (exit 1, the code of a failed stage)."""

    def main(self, args=None, *rest, **kwargs):
        """Run as the process's own command (no `args`: the console script, `python -m reportgen`), the
        command ends the process with `os._exit` once stdout and stderr are flushed: the interpreter's
        teardown of torch's modules takes 0.3-1 s and there is nothing left to do (every file a command
        writes is closed by then). Not after a tracker's package was imported (`output.attach`): trackers
        finish their runs and drain their logging queues in exit handlers (a W&B run, MLflow's asynchronous
        logging), which os._exit would skip. Called with `args` (tests, `CliRunner`), it behaves as click's."""
        if args is not None:
            return super().main(args, *rest, **kwargs)
        _threads_for_free_cores()  # before anything imports torch: OpenMP reads these once, when torch loads it
        try:
            super().main(args, *rest, **kwargs)
            code = 0
        except SystemExit as exc:
            if exc.code is not None and not isinstance(exc.code, int):
                raise  # a message to print: the interpreter does it
            code = exc.code or 0
        if _tracker_imported():
            sys.exit(code)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (`reportgen ... | head`)
                pass
        os._exit(code)

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():
            for category in (UserWarning, FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=LIBRARY_WARNINGS)
            warnings.showwarning = _show_warning(warnings.showwarning)
            previous = _on_sigterm(_terminate)
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt as exc:
                terminated = isinstance(exc, Terminated)
                if not (terminated and _other_rank()):  # torchrun ending the others
                    click.echo(f"{'terminated' if terminated else 'interrupted'}, nothing written", err=True)
                ctx.exit(TERMINATED if terminated else INTERRUPTED)
            finally:
                _on_sigterm(previous)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="reportgen")
def main() -> None:
    """Explain a PyTorch CNN in one self-contained HTML report."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out", type=click.Path(file_okay=False),
              help="Output folder (overrides output.dir); a relative path resolves against the current folder.")
@_set_option
@_untrusted_option
@click.option("--save-arrays", is_flag=True, help="Also write arrays.npz with the numbers behind every figure.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="More detail on stderr (tracebacks of failed stages).")
def build(config: str, out: str | None, overrides: tuple[str, ...], save_arrays: bool, quiet: bool,
          verbose: bool) -> None:
    """Build the report CONFIG describes. Exit 0: built; 1: built, a stage failed; 2: bad input; 130:
    interrupted (Ctrl-C; the previous report is left as it was)."""
    quiet = quiet or _other_rank()  # torchrun: rank 0 speaks for all
    progress = _Progress(quiet, verbose)
    if verbose:  # -v shows what the libraries say, too
        warnings.filterwarnings("default", module=LIBRARY_WARNINGS)
    else:
        _quiet_trackers()
    cfg = None
    progress_bars.configure(not quiet and _stderr_is_terminal())  # a file or a pipe gets one line a stage
    try:
        cfg = _load(config, overrides, out, save_arrays)
        from .api import build as run_build  # the CLI is a thin layer over the Python API

        report = run_build(cfg, log=progress.log, detail=progress.detail)
    except ReportgenError as exc:
        if (cfg is None or isinstance(exc, EveryRank)) and _other_rank():
            # torchrun: every rank read the same config (and machine); rank 0 says what is wrong, once. Ended
            # at once, this rank would have torchrun stop rank 0 before it says it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # torchrun ends it when rank 0 has: nothing to say
            time.sleep(RANK_GRACE)
            sys.exit(2)
        _fail(str(exc), cfg)
        return
    finally:
        progress_bars.configure(False)
    if report is None:  # a rank of a torchrun launch other than 0: rank 0 writes the report and says so
        return
    failed = [s.name for s in report.stages if s.status == "failed"]
    if not quiet:
        size = report.size_bytes / 1e6
        click.echo(f"wrote {report.html_path} ({size:.2f} MB)", err=True)
        if failed:
            click.echo(f"stages failed: {', '.join(failed)} (the report says why)", err=True)
    sys.exit(report.exit_code)


@main.command(short_help="Check a config without running any analysis.")
@click.argument("config", type=click.Path(dir_okay=False))
@_set_option
@_untrusted_option
def validate(config: str, overrides: tuple[str, ...]) -> None:
    """Check CONFIG: keys, files, model construction, layer names, stage options. Runs no analysis."""
    _quiet_trackers()
    cfg = None
    try:
        cfg = _load(config, overrides)
        from .pipeline import validate as run_validate

        info, warnings = run_validate(cfg)
    except ReportgenError as exc:
        _fail(str(exc), cfg)
        return
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    stages = ", ".join(cfg.analyses.enabled()) or "none"
    click.echo(f"{config}: valid. Model {info.description}, {info.num_classes} classes; stages: {stages}.")


def _input_size(value: str) -> tuple[int, int, int]:
    """--input-size: three positive integers C,H,W up to 16 384 (as `model.input_size` in a config)."""
    try:
        size = tuple(int(v) for v in value.replace(" ", "").split(",")[:4])
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1 or max(size) > 16384:
        raise click.BadParameter(f"expected three numbers C,H,W from 1 to 16 384 like 3,224,224, got "
                                 f"`{value[:40]}`.")
    return size


LAYERS_TARGETS = ("a config file (.yaml), a torchvision model name, a TorchScript file (.pt, .ts, from "
                  "torch.jit.save) or a factory `package.module:function`")


def _check_torchscript(path: Path) -> None:
    """Exit 2 unless `path` is a TorchScript archive: a zip holding the model's code (`<name>/code/`), which
    neither a Python file nor a state_dict saved with torch.save has."""
    if path.suffix == ".py":
        _fail(f"{path} is a Python file: `reportgen layers` takes {LAYERS_TARGETS}. For a model built in "
              f"{path.name}, name the function that returns it: `{path.stem}:<function>`.")
    try:
        with zipfile.ZipFile(path) as archive:
            scripted = any("/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        scripted = False
    if not scripted:
        _fail(f"{path} is not a TorchScript model (a checkpoint or other file): `reportgen layers` takes "
              f"{LAYERS_TARGETS}. For a checkpoint, write a config with `model.checkpoint` and give that.")


@main.command(short_help="List a model's layer names, types and output shapes.")
@click.argument("target")
@click.option("--input-size", default="3,224,224", show_default=True, callback=lambda ctx, param, value:
              _input_size(value), help="C,H,W of the example input, when TARGET is not a config file.")
@click.option("--all", "show_all", is_flag=True, help="Also list containers and layers that were not called.")
@_untrusted_option
def layers(target: str, input_size: tuple[int, int, int], show_all: bool) -> None:
    """List layer names, types and output shapes of a model: TARGET is a CONFIG file, a torchvision model
    name, a TorchScript file (.pt, .ts) or a factory `package.module:function`.

    Use the names in `target_layers`, `layers` and friends."""
    try:
        if target.endswith((".yaml", ".yml")):
            cfg = _load(target, ())
        else:
            from .config import Config, ModelConfig

            size = input_size
            if target.endswith(".py") or Path(target).is_file():
                _check_torchscript(Path(target))
                model = ModelConfig(source="torchscript", path=Path(target).resolve(), input_size=size, labels=None)
            elif ":" in target:
                model = ModelConfig(source="module", factory=target, input_size=size, labels=None)
            else:
                model = ModelConfig(source="torchvision", name=target, input_size=size, labels=None)
            cfg = Config(model=model, source=Path.cwd() / "layers")  # a factory's module may sit in this folder
        from .pipeline import prepare_model

        info, _ = prepare_model(cfg, strict=False)  # the layers are listed whatever the model returns
    except ReportgenError as exc:
        _fail(str(exc))
        return
    from .layers import auto_cam_layer, map_text

    traced = any(layer.output_shape is not None for layer in info.layers.values())
    rows = [layer for layer in info.layers.values() if show_all or not traced or layer.output_shape is not None]
    width = max([len(layer.name) for layer in rows] + [5])
    click.echo(f"{'layer':<{width}}  {'type':<22} {'output shape':<22} {'map (C, H, W)':<25} {'params':>12}")
    for layer in rows:
        shape = "x".join(map(str, layer.output_shape)) if layer.output_shape else "-"
        click.echo(f"{layer.name:<{width}}  {layer.type:<22} {shape:<22} {map_text(info, layer.name):<25} "
                   f"{layer.num_params:>12,}")
    if not traced:
        click.echo("\nno output shapes: a TorchScript model takes no hooks (feature maps and CAM need a Python model)")
        return
    for note in info.notes:
        click.echo(f"\nnote: {note}")
    try:
        auto = auto_cam_layer(info)
    except ReportgenError:
        click.echo("\nno spatial layer: CAM methods do not apply")
        return
    click.echo(f"\ndefault CAM layer: {auto.name}")
    if auto.skipped:
        passed = ", ".join(f"{name} ({'x'.join(map(str, shape[1:]))})" for name, shape in auto.skipped)
        click.echo(f"passed over: {passed}: a 1x1 output gives a constant map")


@main.command(short_help="Collect report folders into one static site with an index.")
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--out", "out", default="site", show_default=True, type=click.Path(file_okay=False),
              help="The site's folder: made when missing; an existing site gains the reports (same folder name: "
                   "replaced), the others stay as they are.")
def site(folders: tuple[str, ...], out: str) -> None:
    """Copy the reports in FOLDERS (what `reportgen build` wrote) into the static site OUT and write its
    index.html: every report's thumbnail, title, model, date and headline metrics, sortable and filterable.
    Pictures of reports built with `self_contained: false` are stored once for the whole site. Relative links
    only: the site works from file://, from a sub-path of static hosting, and offline."""
    from .site import add_reports

    index = _writing("the site", out, lambda: add_reports([Path(f) for f in folders], Path(out)))
    click.echo(f"wrote {index} ({len(folders)} report{'s' if len(folders) != 1 else ''} added)", err=True)


@main.command(short_help="Put two models' reports side by side.")
@click.argument("a", type=click.Path(file_okay=False))
@click.argument("b", type=click.Path(file_okay=False))
@click.option("-o", "--out", "out", default="comparison", show_default=True, type=click.Path(file_okay=False),
              help="Folder for compare.html, compare.json and compare_maps.npz.")
@click.option("--detail", type=click.IntRange(min=0), default=40, show_default=True, metavar="N",
              help="Pairs of maps drawn on the page: changed predictions first, then the largest differences. "
                   "compare.json and compare_maps.npz hold every pair.")
def compare(a: str, b: str, out: str, detail: int) -> None:
    """Compare the reports in folders A and B (built with save_arrays, on the same images): which predictions
    changed, the summaries and headline metrics with B − A, and the pairs of maps that differ most, A beside B
    and their difference; what only one of them has is listed. Writes OUT/compare.html, OUT/compare.json (every
    pair's summary) and OUT/compare_maps.npz (every pair's maps)."""
    from .compare import write_compare

    page = _writing("the comparison", out, lambda: write_compare(Path(a), Path(b), Path(out), detail))
    click.echo(f"wrote {page}", err=True)


@main.command()
@click.argument("path", default="reportgen.yaml", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: str, force: bool) -> None:
    """Write a commented starter config to PATH (default: reportgen.yaml; `-`: standard output)."""
    from .config import STARTER

    if path == "-":
        click.echo(STARTER, nl=False)
        return
    from .write import write_atomic

    target = Path(path)
    if target.exists() and not force:
        _fail(f"{target} exists; use --force to overwrite it.")
    try:
        write_atomic(target, STARTER.encode("utf-8"))
    except OSError as exc:
        _fail(f"cannot write {target}: {exc.strerror or exc}")
    click.echo(f"wrote {target}; edit it, then run: reportgen build {target}")


if __name__ == "__main__":
    main()
