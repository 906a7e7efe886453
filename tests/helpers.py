"""Small test helpers shared by several test modules."""

import hashlib
import subprocess
import sys
from pathlib import Path


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
    """Run ``python -m ernie_paddle ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "ernie_paddle", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def export_weight_bytes(folder: Path) -> int:
    """The bytes an export stores its weights in: step.pdiparams plus weights.bin (native programs)."""
    return sum((Path(folder) / name).stat().st_size for name in ("step.pdiparams", "weights.bin")
               if (Path(folder) / name).exists())
