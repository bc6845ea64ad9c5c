"""Shared fixtures: the tiny model, its GGUF export and synthetic data, built once per session.

Nothing here downloads anything; HF_HUB_OFFLINE is forced so a stray hub lookup fails loudly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adfm.offline import force_offline

force_offline()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


HAS_TORCH = _has("torch") and _has("transformers")
HAS_LLAMA = _has("llama_cpp")

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs the trainer extra (torch, transformers)")
needs_llama = pytest.mark.skipif(not HAS_LLAMA, reason="needs llama-cpp-python (appliance/export extra)")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--busy", type=int, default=0, metavar="N",
                     help="run the tests with N busy processes beside them (a station is never idle)")


@pytest.fixture(scope="session", autouse=True)
def busy_processes(request: pytest.FixtureRequest) -> Iterator[int]:
    """`--busy N`: N processes spinning at normal priority for the whole session."""
    n = int(request.config.getoption("--busy"))
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield n
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(10)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen2.5-VL checkpoint directory (hidden 256, 2 layers)."""
    if not HAS_TORCH:
        pytest.skip("needs the trainer extra (torch, transformers)")
    from adfm.trainer.tiny_model import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen25vl"))


@pytest.fixture(scope="session")
def synthetic_mvtec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in MVTec AD's layout (washer, tile; scratch, spot)."""
    from adfm.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("mvtec"), layout="mvtec", seed=0)


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A customer-station folder layout: normal/, anomalous/, masks/."""
    from adfm.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("station"), layout="folder", seed=1)


@pytest.fixture(scope="session")
def tiny_gguf_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model exported through `adfm-export` (q4_k_m GGUF + f16 mmproj + manifest)."""
    if not HAS_LLAMA:
        pytest.skip("needs llama-cpp-python (appliance/export extra)")
    from adfm.export.tiny import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf"), quant="q4_k_m", base_dir=tiny_model_dir)


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server for the plant tests (skipped only when PostgreSQL is not installed)."""
    from tests.plant_support import PgCluster, missing_reason

    why = missing_reason()
    if why:
        pytest.skip(why)
    cluster = PgCluster()
    yield cluster
    cluster.close()


@pytest.fixture
def plant_db(pg_cluster, request):
    """A fresh, migrated plant database in the session's cluster: its DSN."""
    import re

    from adfm.plant.db import connect, migrate

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    dsn = pg_cluster.create_database(name)
    with connect(dsn) as conn:
        migrate(conn)
    return dsn
