"""Dataset generators writing the official NEM HDF5 layout.

Modules:
    registry      dataset names, defaults, and each kind's sampler and file attributes
    writer        `generate_dataset`: checks, block-by-block HDF5 writing, the progress bar
    shapes        static and flying shapes (squares and triangles), 28x28 binary
    flying_mnist  flying MNIST (bouncing downscaled digits), 24x24 grey, and its digit sources
    sprites       bouncing trajectories and compositing with ground-truth groups, shared by both
    interrupts    SIGINT and SIGTERM deferred to checks in the generation loops, for `nem-data`
    command       the `nem-data` command

Layout: groups `training`, `validation`, `test`, each with float32 `features` and `groups` shaped
(T, N, H, W, 1), time first, then sample. `groups` is 0 for background and for pixels where two or
more objects overlap, k for object k. Flying-MNIST splits also hold `digit_ids` (N, n), the source
image of each digit. Generation settings are stored as attributes of the file root.

Every file is a pure function of (name, seed, sizes, frames, digit source): each block of
`BLOCK` samples draws from its own random stream keyed by (seed, split, block).
"""

from nem_lightning.generators import flying_mnist, shapes, sprites
from nem_lightning.generators.registry import (
    DATASET_NAMES,
    DEFAULT_FRAMES,
    DEFAULT_MAX_SPEED,
    DEFAULT_SIZES,
    GENERATOR_VERSION,
    SPLITS,
)
from nem_lightning.generators.writer import BLOCK, generate_dataset

__all__ = [
    "BLOCK",
    "DATASET_NAMES",
    "DEFAULT_FRAMES",
    "DEFAULT_MAX_SPEED",
    "DEFAULT_SIZES",
    "GENERATOR_VERSION",
    "SPLITS",
    "flying_mnist",
    "generate_dataset",
    "shapes",
    "sprites",
]
