"""Shared fixtures: keys, a seeded source cluster, and config files on temp dirs.

Every server binds to 127.0.0.1 on a free port and is removed at the end.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RESGUARDO_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory) -> Path:
    """One recipient key pair, one signing key pair."""
    from encryption.keys import generate_keypair

    directory = tmp_path_factory.mktemp("keys")
    generate_keypair(directory, "recipient", "x25519")
    generate_keypair(directory, "signing", "ed25519")
    return directory


@pytest.fixture(scope="session")
def source_cluster():
    """A running cluster with the demo bank database ``banca`` (small)."""
    from demo.seed import seed_sql
    from restore.scratch import ScratchCluster

    cluster = ScratchCluster(name="source")
    cluster.start()
    cluster.create_database("banca")
    cluster.psql(seed_sql(clients=2000, accounts=3000, movements=20000), "banca")
    yield cluster
    cluster.destroy()


def write_config(directory: Path, keys_dir: Path, *, regions: dict, databases: dict, **extra) -> Path:
    """Write a resguardo.yaml with the given regions and databases; return its path."""
    document = {
        "language": "es",
        "state_dir": str(directory / "state"),
        "encryption": {
            "recipients": [str(keys_dir / "recipient.pub")],
            "identity": str(keys_dir / "recipient.key"),
            "chunk_size_kib": 256,
        },
        "signing": {"private_key": str(keys_dir / "signing.key"), "public_key": str(keys_dir / "signing.pub")},
        "evidence": {"region": "evidence", "prefix": "evidence"},
        "regions": {"evidence": {"kind": "filesystem", "path": str(directory / "evidence")}, **regions},
        "databases": databases,
    }
    document.update(extra)
    for region in document["regions"].values():
        if region["kind"] == "filesystem":
            try:
                Path(region["path"]).mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                pass  # a test that simulates a broken region
    path = directory / "resguardo.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def fs_config(tmp_path, keys_dir, source_cluster):
    """Config with two filesystem regions for database ``banca``; returns (path, config)."""
    from resguardo.config import load_config

    path = write_config(
        tmp_path,
        keys_dir,
        regions={
            "fs-uio": {"kind": "filesystem", "path": str(tmp_path / "uio"), "location": "Quito"},
            "fs-gye": {"kind": "filesystem", "path": str(tmp_path / "gye"), "location": "Guayaquil"},
        },
        databases={"banca": {"dsn": source_cluster.dsn("banca"), "regions": ["fs-uio", "fs-gye"]}},
    )
    return path, load_config(path)
