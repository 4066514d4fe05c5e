"""Where a run writes and how a resumed run goes on: run names, run folders, metrics history and W&B continuation.

Every function takes the loggers as they appear in the parsed config (``class_path`` / ``init_args`` entries),
before Lightning builds them, and changes only those entries or the folders it names.
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger

from nem_lightning.files import atomic_path

LOGGERS_WITH_NAMES = ("CSVLogger", "TensorBoardLogger", "WandbLogger")
LOGGERS_WITH_FOLDERS = ("CSVLogger", "TensorBoardLogger")


def _entries(loggers: Any) -> list[Any]:
    return [item for item in (loggers if isinstance(loggers, list) else [loggers]) if hasattr(item, "init_args")]


def run_name(config: Any, first_config: str | None = None) -> str:
    """The run's name: ``name`` if set, else the first ``--config`` file's stem (not a base's), else ``nem``."""
    if config.get("name"):
        return str(config.name)
    files = [first_config] if first_config else [str(path) for path in config.get("config") or []]
    return Path(files[0]).stem if files else "nem"


def name_loggers(loggers: Any, name: str) -> None:
    """Give each CSV, TensorBoard and W&B logger of the config that has no name of its own the run's name."""
    for item in _entries(loggers):
        if str(item.class_path).endswith(LOGGERS_WITH_NAMES) and not item.init_args.get("name"):
            item.init_args.name = name


@dataclass
class Reservation:
    """What ``reserve_run_folders`` did: folders it created, logger entries it gave a version, and whether the
    run goes on in the folder of the checkpoint it resumes."""

    created: list[Path] = field(default_factory=list)
    versioned: list[Any] = field(default_factory=list)
    resumed: bool = False


def _next_version(root: Path) -> int:
    versions = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    return max(versions, default=-1) + 1


def reserve_run_folders(loggers: Any, resume_from: str | None = None) -> Reservation:
    """Give each CSV/TensorBoard logger without a version a run folder of its own, created atomically.

    Lightning picks ``version_N`` by listing the folder, so two runs started together would share one. Here the
    folder is made with ``mkdir`` (which fails if it exists) and the logger is told its version. A training run
    resumed from ``<root>/version_N/checkpoints/*.ckpt`` (``resume_from``) goes on in ``version_N``. Only the first
    process reserves: under DDP Lightning broadcasts its folders to the others.
    """
    reservation = Reservation()
    if int(os.environ.get("RANK", 0)) != 0 or int(os.environ.get("LOCAL_RANK", 0)) != 0:
        return reservation
    for item in _entries(loggers):
        args = item.init_args
        if not str(item.class_path).endswith(LOGGERS_WITH_FOLDERS) or args.get("version") is not None:
            continue
        root = Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")
        run_dir = Path(resume_from).resolve().parents[1] if resume_from else None
        if run_dir is not None and run_dir.parent == root.resolve() and run_dir.name.startswith("version_"):
            args.version, reservation.resumed = int(run_dir.name[8:]), True
            reservation.versioned.append(item)
            continue
        root.mkdir(parents=True, exist_ok=True)
        version = _next_version(root)
        while True:
            try:
                (root / f"version_{version}").mkdir()
                break
            except FileExistsError:  # another run took it between listing and mkdir
                version += 1
        reservation.created.append(root / f"version_{version}")
        args.version = version
        reservation.versioned.append(item)
    return reservation


def discard_unused(folders: list[Path]) -> None:
    """Remove those of ``folders`` into which the run wrote no checkpoint and no metrics (hparams.yaml aside)."""
    for folder in folders:
        if folder.is_dir() and not any(folder.rglob("*.ckpt")) and not any(folder.rglob("metrics.csv")):
            shutil.rmtree(folder, ignore_errors=True)
            if folder.parent.is_dir() and not any(folder.parent.iterdir()):
                folder.parent.rmdir()  # the run's <save_dir>/<name> folder, if this run was its only one


def keep_metrics_history(logger: CSVLogger, step: int) -> None:
    """Keep a resumed run's ``metrics.csv`` rows up to its checkpoint (Lightning's CSV logger would delete them).

    Rows logged after the checkpoint (training steps from ``step`` on) are dropped: the resumed run logs them
    again. Validation rows at ``step`` came before the checkpoint and stay.
    """
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        header, rows = list(reader.fieldnames or []), list(reader)

    def before(row: dict[str, str]) -> bool:
        logged = int(float(row.get("step") or 0))
        training = any(row.get(key) for key in header if key.startswith("train/"))
        return logged < step or (logged == step and not training)

    writer = logger.experiment  # created now: it deletes metrics.csv, whose rows are in memory
    with atomic_path(path) as partial, open(partial, "w", newline="") as file:
        table = csv.DictWriter(file, fieldnames=header)
        table.writeheader()
        table.writerows(row for row in rows if before(row))
    writer.metrics_keys = sorted(header)  # so the next rows append under the same columns


def continue_wandb_run(loggers: Any, run_id: str | None) -> None:
    """Point each W&B logger without an id or version at ``run_id`` (a resumed checkpoint's run), if any."""
    if not run_id:
        return
    for item in _entries(loggers):
        args = item.init_args
        if str(item.class_path).endswith("WandbLogger") and not args.get("id") and not args.get("version"):
            args.id = run_id


def wandb_never_blocks() -> None:
    """Run W&B offline unless the user chose a mode or has logged in: no login prompt, no network wait.

    An explicit ``WANDB_MODE`` (``online``, ``offline``, ``disabled``) always wins. Otherwise, without an
    API key (``WANDB_API_KEY`` or the ~/.netrc entry ``wandb login`` writes), runs log offline into their
    save_dir; upload them later with ``wandb sync``.
    """
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):  # an empty WANDB_MODE counts as unset
        return
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    os.environ["WANDB_MODE"] = "offline"
