"""Shared fixtures: the ../shared material, where present, and tool checks."""

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("WARDWATCH_SHARED", REPO_ROOT.parent / "shared"))
SHARED_PCAPS = SHARED_DIR / "pcaps"
SHARED_LOGS = SHARED_DIR / "logs"


@pytest.fixture(scope="session")
def shared_pcaps() -> Path:
    """Return ../shared/pcaps, or skip the test where it is absent."""
    if not (SHARED_PCAPS / "MANIFEST.tsv").is_file():
        pytest.skip(f"shared captures not found at {SHARED_PCAPS}")
    return SHARED_PCAPS


@pytest.fixture(scope="session")
def shared_logs() -> Path:
    """Return ../shared/logs, or skip the test where it is absent."""
    if not SHARED_LOGS.is_dir():
        pytest.skip(f"shared logs not found at {SHARED_LOGS}")
    return SHARED_LOGS


def require_tool(name: str) -> str:
    """Return the path of an executable, or skip the test naming what is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def require_root() -> None:
    """Skip the test unless it runs as root."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, raw sockets or nftables)")


@pytest.fixture
def netns():
    """Create a network namespace with a unique name for nftables tests; delete it afterwards."""
    require_root()
    require_tool("ip")
    require_tool("nft")
    name = f"wwtest-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
