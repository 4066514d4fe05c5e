"""Shared fixtures: tiny data files, generated once per test session."""

import os

import pytest

from helpers import random_static, write_official_layout
from nem_lightning.generators import generate_dataset

# W&B must never log in or touch the network from the tests; tests that want offline mode set it.
os.environ["WANDB_MODE"] = "disabled"


@pytest.fixture(scope="session")
def shapes_file(tmp_path_factory):
    """A tiny static-shapes file from our generator: 96 / 48 / 48 samples."""
    return str(
        generate_dataset("shapes", tmp_path_factory.mktemp("data") / "shapes.h5", sizes=(96, 48, 48), progress=False)
    )


@pytest.fixture(scope="session")
def foreign_shapes_file(tmp_path_factory):
    """A static file in the official layout written by plain h5py (uint8, with an extra dataset)."""
    path = tmp_path_factory.mktemp("foreign") / "foreign.h5"
    return write_official_layout(
        path, {s: random_static(40, i) for i, s in enumerate(("training", "validation", "test"))}
    )


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Run every test in its own folder, so nothing (runs/, figures/) lands in the working tree."""
    monkeypatch.chdir(tmp_path)
