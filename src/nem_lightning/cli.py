"""The ``nem`` command: LightningCLI with fit/validate/test/predict, and the project's run policy.

    nem fit --config configs/shapes.yaml
    nem test --config configs/shapes.yaml --ckpt_path runs/shapes/version_0/checkpoints/last.ckpt

This is the one place that decides run policy: refusing to score untrained weights, and turning the
project's own errors into one readable line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pytorch_lightning.cli import LightningCLI

from nem_lightning.data import GroupingDataModule
from nem_lightning.errors import NEMError
from nem_lightning.module import NEMLightningModule

NEEDS_CHECKPOINT = ("validate", "test", "predict")


class NEMCLI(LightningCLI):
    """LightningCLI for Neural EM."""

    def before_instantiate_classes(self) -> None:
        # The resolved config is saved with each training run (in its own log directory); scoring runs
        # would otherwise write config.yaml into the working directory and collide on the second run.
        if self.subcommand != "fit":
            self.save_config_callback = None
        # Lightning would score random weights and exit 0 without a checkpoint (and `--ckpt_path last`
        # in a fresh process only warns): refuse instead.
        if self.subcommand in NEEDS_CHECKPOINT:
            ckpt = self.config[self.subcommand].get("ckpt_path")
            if not ckpt or not Path(ckpt).is_file():
                got = f"got {ckpt!r}" if ckpt else "none given"
                raise NEMError(
                    f"nem {self.subcommand} needs --ckpt_path naming an existing checkpoint file ({got}); "
                    f"refusing to score untrained weights"
                )


def main(args: list[str] | None = None) -> NEMCLI:
    """Entry point of the ``nem`` console script; returns the CLI (trainer, model, data) when called in code."""
    try:
        return NEMCLI(NEMLightningModule, GroupingDataModule, args=args)
    except NEMError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
