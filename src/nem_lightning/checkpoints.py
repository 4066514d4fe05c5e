"""Checkpoint files: reading them safely, checking their network against a config, loading and exporting weights.

    nem-export runs/flying_shapes/version_0/checkpoints/best-....ckpt weights/flying_shapes.ckpt --half

A *weights-only* file (``nem-export``) holds the network weights and model options without optimizer or loop
state: a third of the size (a sixth in half precision), read wherever weights are read (``nem test``,
``nem validate``, ``nem predict``, ``--weights_from``), but it cannot resume training.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

import torch

from nem_lightning.errors import ConfigError, NEMError
from nem_lightning.files import atomic_path
from nem_lightning.module import NEMLightningModule

# Model options that change the network: a checkpoint trained with other values cannot be scored under this config.
ARCHITECTURE_OPTIONS = ("architecture", "m_step", "input_shape", "hidden_size", "distribution", "layer_norm")
WEIGHTS_ONLY_KEYS = ("state_dict", "hyper_parameters", "pytorch-lightning_version")


def default(name: str) -> Any:
    """The default of a model option."""
    return inspect.signature(NEMLightningModule).parameters[name].default


def read_checkpoint(path: str, option: str = "--ckpt_path") -> dict[str, Any]:
    """A checkpoint's contents (tensors memory-mapped); NEMError naming ``option`` and the file if unreadable."""
    if not Path(path).is_file():
        raise NEMError(f"{option} {path!r} is not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a zip, not a pickle: all the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NEMError(f"{option} {path!r} is not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise NEMError(f"{option} {path!r} is not a Lightning checkpoint (it holds no state_dict)")
    return ckpt


def is_weights_only(ckpt: dict[str, Any]) -> bool:
    """Whether a checkpoint lacks the optimizer and loop state that resuming training needs."""
    return "optimizer_states" not in ckpt or not ckpt.get("loops")


def check_resumable(path: str, ckpt: dict[str, Any]) -> None:
    """Refuse to resume ``nem fit`` from a weights-only file, pointing at ``--weights_from``."""
    if is_weights_only(ckpt):
        raise NEMError(
            f"--ckpt_path {path!r} holds weights only (no optimizer or loop state), so training cannot resume from "
            f"it; start a new run from its weights with --weights_from {path}"
        )


def check_architecture(path: str, asked: dict[str, Any], trained: dict[str, Any]) -> None:
    """Refuse a checkpoint whose network differs from the one the config asks for.

    ``asked`` holds the options the config files or the command line state (unstated options ask nothing, as the
    checkpoint's values then apply), ``trained`` the checkpoint's.
    """

    def norm(value: Any) -> Any:
        return [int(v) for v in value] if isinstance(value, (list, tuple)) else value

    conflicts = [
        f"{name}: config {norm(asked[name])}, checkpoint {norm(trained.get(name, default(name)))}"
        for name in ARCHITECTURE_OPTIONS
        if name in asked and norm(asked[name]) != norm(trained.get(name, default(name)))
    ]
    if conflicts:
        raise NEMError(
            f"--ckpt_path {path!r} holds another network than the config asks for ({'; '.join(conflicts)}); "
            f"use the config it was trained with"
        )


def load_weights(model: NEMLightningModule, path: str) -> dict[str, Any]:
    """Copy the network weights of a checkpoint into ``model``; optimizer and loop state are not touched.

    Returns the checkpoint's contents, for ``optimizer_state``.
    """
    ckpt = read_checkpoint(path, "--weights_from")
    state = ckpt["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or differently shaped weights
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ConfigError(
            f"--weights_from {path!r} does not fit this model ({first}); the architecture options must match"
        ) from None
    return ckpt


def optimizer_state(path: str, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state of full checkpoint ``ckpt`` (read from ``path``), for ``--carry_optimizer``; ConfigError
    for a weights-only file."""
    if not ckpt.get("optimizer_states"):
        raise ConfigError(
            f"--weights_from {path!r} holds weights only, so --carry_optimizer has no optimizer state to carry; "
            f"pass the previous run's own checkpoint (runs/<name>/version_N/checkpoints/...)"
        )
    return ckpt["optimizer_states"][0]


def save_weights_only(source: str, target: str, half: bool = False) -> None:
    """Write ``source``'s weights and model options to ``target``, without optimizer or loop state.

    With ``half`` the floating-point weights are stored as float16 (loaded back into float32 parameters).
    Written atomically: ``target`` appears complete or not at all.
    """
    try:
        full = torch.load(source, map_location="cpu", weights_only=False)
        state = {key: full[key] for key in WEIGHTS_ONLY_KEYS}
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise ConfigError(f"{source!r} could not be read as a training checkpoint ({err})") from None
    if half:
        state["state_dict"] = {
            key: value.half() if value.is_floating_point() else value for key, value in state["state_dict"].items()
        }
    state.update(epoch=full.get("epoch", 0), global_step=full.get("global_step", 0), loops=None)
    with atomic_path(target) as tmp:
        torch.save(state, tmp)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``nem-export``: write a checkpoint's weights only; errors are one line, exit code 2."""
    parser = argparse.ArgumentParser(prog="nem-export", description=save_weights_only.__doc__.splitlines()[0])
    parser.add_argument("source", help="a checkpoint written by nem fit (best-*.ckpt or last.ckpt)")
    parser.add_argument("target", help="the weights-only file to write")
    parser.add_argument("--half", action="store_true", help="store the weights in float16 (half the size)")
    args = parser.parse_args(argv)
    try:
        save_weights_only(args.source, args.target, args.half)
    except NEMError as err:
        print(f"nem-export: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"nem-export: wrote the weights of {args.source} to {args.target}{' (float16)' if args.half else ''}")


if __name__ == "__main__":
    main()
