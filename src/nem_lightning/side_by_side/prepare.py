"""Before the side-by-side runs start: each run's complete config read, every missing data file generated
once, and each run's CPU threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nem_lightning.side_by_side.processes import log, start
from nem_lightning.side_by_side.runs import Run, config_args_with

REDUCED_SIZES = (64, 16, 16)


# ----------------------------------------------------------------------------------------------------------------
# 1. each run's data and accelerator, from its complete config

# One process for all runs: `nem fit ... --print_config` prints the config the run would use (config files,
# the base config and options merged) and exits before anything is built.
RESOLVE = """
import contextlib, io, json, os, sys
import torch, yaml
from nem_lightning.cli import run
report = {"cuda": torch.cuda.is_available(), "cpus": os.cpu_count(), "runs": {}}
for name, args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run(["fit", *args, "--print_config"])
    except SystemExit as stop:
        code = stop.code or 0
    if code:
        lines = err.getvalue().strip().splitlines() or [f"exit {code}"]
        report["runs"][name] = {"error": lines[-1], "code": code if isinstance(code, int) else 1, "output": lines}
        continue
    config = yaml.safe_load(out.getvalue())
    data = config.get("data") or {}
    report["runs"][name] = {
        "path": data.get("path"), "generate": data.get("generate"), "seed": data.get("generate_seed", 0),
        "accelerator": str((config.get("trainer") or {}).get("accelerator", "auto")),
    }
print("RESOLVED " + json.dumps(report))
"""


def resolve(runs: list[Run], mode_options: list[str], out: Path, env: dict[str, str], cwd: Path) -> dict:
    """Each run's data settings and accelerator as its complete config states them, and the host's devices.

    Returns ``{"cuda": bool, "cpus": int, "runs": {name: {path, generate, seed, accelerator}}}``; a run whose
    options ``nem fit`` refuses gets ``{error, code, output}`` instead: its message, exit status and stderr.
    """
    plan = json.dumps([[run.name, config_args_with(run, mode_options)] for run in runs])
    logfile = out / "resolve.log"
    with open(logfile, "w") as f:
        done = subprocess.run(
            [sys.executable, "-c", RESOLVE, plan], stdout=subprocess.PIPE, stderr=f, text=True, cwd=cwd, env=env
        )
        f.write(done.stdout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESOLVED ")]
    if done.returncode or not lines:
        raise RuntimeError(f"reading the runs' configs failed (exit {done.returncode}); see {logfile}")
    return json.loads(lines[-1][len("RESOLVED ") :])


# ----------------------------------------------------------------------------------------------------------------
# 2. data: every missing file once


@dataclass
class DataFile:
    """A data file some runs read, and how to generate it (``generate`` None: it must exist already)."""

    path: Path
    generate: str | None
    seed: int
    sizes: tuple[int, int, int] | None = None  # None: the generator's defaults, as `nem fit` would use
    runs: list[str] = field(default_factory=list)


def data_files(runs: list[Run], resolved: dict, cwd: Path, reduced_data: Path | None = None) -> dict[str, DataFile]:
    """Run name -> the data file it reads; runs sharing a file share one ``DataFile``.

    With ``reduced_data`` each generated dataset is written small into that folder instead of its own path.
    Two runs wanting different data at one path are refused: one of them would train on the other's.
    """
    by_path: dict[Path, DataFile] = {}
    of_run: dict[str, DataFile] = {}
    for run in runs:
        info = resolved["runs"].get(run.name) or {}
        if "error" in info or not (info.get("path") or info.get("generate")):
            continue  # refused (never started), or no data settings: nothing to prepare
        generate, seed = info.get("generate"), int(info.get("seed") or 0)
        if reduced_data is not None and generate:
            path = reduced_data / (f"{generate}.h5" if seed == 0 else f"{generate}_seed{seed}.h5")
            sizes = REDUCED_SIZES
        else:
            # the data module's own default for a null path
            path = (cwd / (info.get("path") or os.path.join("data", f"{generate}.h5"))).resolve()
            sizes = None
        entry = by_path.setdefault(path, DataFile(path, generate, seed, sizes))
        if generate and entry.generate is None:
            entry.generate, entry.seed = generate, seed  # a run that can generate it does so for the others
        elif generate and (entry.generate, entry.seed) != (generate, seed):
            other = entry.runs[0]
            raise ValueError(
                f"runs {other!r} and {run.name!r} want different data at {path} ({entry.generate} seed "
                f"{entry.seed}, {generate} seed {seed}); give one of them another --data.path"
            )
        entry.runs.append(run.name)
        of_run[run.name] = entry
    return of_run


GENERATE = """
import json, sys
from nem_lightning.generators import generate_dataset
sizes = json.loads(sys.argv[4])
generate_dataset(sys.argv[1], sys.argv[2], seed=int(sys.argv[3]), sizes=tuple(sizes) if sizes else None, progress=False)
print(f"generated {sys.argv[1]} (seed {sys.argv[3]}, sizes {sizes or 'default'}) at {sys.argv[2]}")
"""


def prepare_data(files: list[DataFile], out: Path, env: dict[str, str]) -> dict[Path, str]:
    """Generate every missing file, each once, different files at the same time; return path -> why it failed.

    Files that exist are left as they are (``nem fit`` itself refuses one from an older generator).
    """
    missing = {f.path: f for f in files if not f.path.exists()}
    failed: dict[Path, str] = {}
    processes = {}
    for path, entry in missing.items():
        if entry.generate is None:
            failed[path] = f"{path} does not exist and its runs set no data.generate"
            continue
        logfile = out / f"data_{entry.generate}_{len(processes)}.log"
        command = [sys.executable, "-c", GENERATE, entry.generate, str(path), str(entry.seed), json.dumps(entry.sizes)]
        log(f"generating {entry.generate} at {path} for {', '.join(entry.runs)}")
        processes[str(path)] = (start(command, logfile, env), logfile)
    for path, (process, logfile) in processes.items():
        if process.wait():
            failed[Path(path)] = f"generating {path} failed (exit {process.returncode}); see {logfile.name}"
    return failed


# ----------------------------------------------------------------------------------------------------------------
# 3. CPU threads of each run


def threads_per_run(runs: list[Run], resolved: dict, threads: int | None) -> dict[str, int | None]:
    """CPU threads of each run: ``threads`` if given, else the cores shared out among the runs on the CPU.

    Runs on a GPU are left to torch's defaults (their CPU work is the loader's).
    """

    def on_cpu(run: Run) -> bool:
        accelerator = (resolved["runs"].get(run.name) or {}).get("accelerator", "auto")
        return accelerator == "cpu" or (accelerator == "auto" and not resolved.get("cuda"))

    started = [run for run in runs if "error" not in (resolved["runs"].get(run.name) or {})]  # refused: not run
    cpu_runs = [run.name for run in started if on_cpu(run)]
    share = threads or max(1, int(resolved.get("cpus") or 1) // max(1, len(cpu_runs)))
    return {run.name: share if run.name in cpu_runs else None for run in runs}
