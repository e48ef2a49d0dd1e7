"""Run the offline manifest validator (``tools/bin/k8s-validate``, built by ``make setup``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from management.compose import repo_root

__all__ = ["VALIDATOR", "validate_manifests", "validator_path"]

VALIDATOR = "k8s-validate"
TIMEOUT_S = 120.0


def validator_path() -> Path | None:
    """``tools/bin/k8s-validate`` of the checkout, when it has been built."""
    root = repo_root()
    path = root / "tools" / "bin" / VALIDATOR if root is not None else None
    return path if path is not None and path.is_file() else None


def validate_manifests(*paths: Path) -> tuple[bool, str]:
    """(valid, the validator's report); not valid with a hint when it is not built."""
    binary = validator_path()
    if binary is None:
        return False, f"{VALIDATOR} is not built: run `make setup` (it needs Go), then again"
    try:
        proc = subprocess.run(
            [str(binary), *(str(p) for p in paths)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"{VALIDATOR} did not finish within {TIMEOUT_S:g} s"
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()
