"""Sweep files: the command line a W&B agent builds from each one parses with the nem CLI (no network)."""

import itertools
import random
from pathlib import Path

import pytest
import yaml

from nem_lightning.cli import run

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


def _draw(spec, rng):
    """One value of a W&B parameter spec, as the sweep controller would choose it."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return spec["values"]
    low, high = spec["min"], spec["max"]
    return [rng.uniform(low, high) if spec["distribution"] == "uniform" else low * (high / low) ** rng.random()]


def agent_commands(sweep):
    """Every command line of a grid sweep, or a few draws of a random one: `${args}` is `--name=value`."""
    rng, names = random.Random(0), sorted(sweep["parameters"])
    choices = [_draw(sweep["parameters"][n], rng) for n in names]
    for combo in itertools.islice(itertools.product(*choices), 27):
        args = [f"--{n}={v}" for n, v in zip(names, combo)]
        command = []
        for part in sweep["command"]:
            command += {"${env}": [], "${args}": args}.get(part, [part])
        yield command, dict(zip(names, combo))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_commands_parse(path, capsys, monkeypatch):
    """For each run the agent would start, `nem fit ...` parses and the swept values reach the config."""
    monkeypatch.chdir(ROOT)
    sweep = yaml.safe_load(path.read_text())
    assert sweep["command"][:3] == ["${env}", "nem", "fit"] and "seed_everything" in sweep["parameters"]
    runs = 0
    for command, values in agent_commands(sweep):
        with pytest.raises(SystemExit) as info:
            run(command[1:] + ["--print_config"])  # drop the program name
        assert info.value.code in (0, None)
        config = yaml.safe_load(capsys.readouterr().out)
        for name, value in values.items():
            section, _, key = name.rpartition(".")
            got = config[section][key] if section else config[key]
            assert got == (None if value == "null" else value)
        runs += 1
    assert runs == (9 if sweep["method"] == "grid" else 5)
