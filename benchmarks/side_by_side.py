"""The side-by-side runner, kept at its old path: ``python benchmarks/side_by_side.py ...`` is ``nem-side-by-side ...``
(``nem_lightning.side_by_side``, where its parts now live; ``nem-side-by-side --help`` has the whole story).

    # a GPU: the flying-shapes flagship and a K = 5 variant, 10 minutes each, validating every 300 updates
    python benchmarks/side_by_side.py --out gpu_runs --minutes 10 --val-every 300 \\
        --run flagship=configs/flying_shapes.yaml --run "k5=configs/flying_shapes.yaml::--model.k 5"

    # anywhere, in about a minute: tiny data and a few updates of two runs on the CPU
    python benchmarks/side_by_side.py --out sbs_check --reduced
"""

import sys

from nem_lightning.side_by_side import *  # noqa: F403  (gpu_check.py and the tests take the runner's parts from here)
from nem_lightning.side_by_side import __all__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
