"""Install detectron2 0.6 (Python sources only) from the PyPI sdist ``pb1-detectron2==0.6``.

The sdist contains the unchanged upstream v0.6 Python package and model-zoo configs but not the
C++ sources of ``detectron2._C``, so ``pip install pb1-detectron2`` fails while compiling.
This script downloads the sdist (pip < 26 is required, because pip 26 rejects the URL
dependency declared in its ``all`` extra), checks its SHA-256, and builds a pure-Python wheel
named ``detectron2`` from it with no extension modules. ``covid_d2.compat`` supplies what the
missing extension would provide.

Run with the interpreter of the target environment; torch must already be installed there,
because the sdist's metadata step imports it.
"""

import argparse
import hashlib
import logging
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import textwrap

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
# SHA-256 of the sdist installed and tested with covid-d2 (downloaded 2026-12-04).
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

logger = logging.getLogger("install_detectron2")

WHEEL_SETUP_PY = textwrap.dedent(
    """
    from setuptools import find_packages, setup

    setup(
        name="detectron2",
        version="0.6",
        description="detectron2 v0.6 Python sources from the pb1-detectron2 sdist, without _C",
        packages=find_packages(include=["detectron2", "detectron2.*"]),
        package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},
        python_requires=">=3.6",
    )
    """
)


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_sdist(dest: pathlib.Path) -> pathlib.Path:
    """Download the sdist with pip without building it; return the archive path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
        "--no-binary", SDIST_NAME, f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(dest),
    ]
    logger.info("Downloading %s==%s", SDIST_NAME, SDIST_VERSION)
    subprocess.run(cmd, check=True)
    archive = dest / SDIST_FILE
    if not archive.is_file():
        raise SystemExit(f"pip did not save {SDIST_FILE} into {dest}; check the pip output above.")
    return archive


def build_and_install(archive: pathlib.Path, work: pathlib.Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    source = work / f"{SDIST_NAME}-{SDIST_VERSION}"
    if not (source / "detectron2" / "model_zoo" / "configs").is_dir():
        raise SystemExit(f"{archive} has no detectron2/model_zoo/configs; unexpected sdist layout.")
    (source / "setup.py").write_text(WHEEL_SETUP_PY)
    (source / "pyproject.toml").unlink(missing_ok=True)
    logger.info("Installing detectron2 0.6 (pure Python) from %s", source)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", str(source)],
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=pathlib.Path, default=pathlib.Path(".cache"),
                        help="folder that keeps the downloaded sdist between runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    archive = args.cache_dir / SDIST_FILE
    if not archive.is_file():
        archive = download_sdist(args.cache_dir)
    digest = sha256_of(archive)
    if digest != SDIST_SHA256:
        raise SystemExit(
            f"{archive} has SHA-256 {digest}, expected {SDIST_SHA256}. Delete the file and run "
            "again; if the hash still differs, PyPI serves a different sdist and it must be "
            "reviewed before use."
        )
    logger.info("%s SHA-256 %s matches", archive.name, digest)
    with tempfile.TemporaryDirectory() as work:
        build_and_install(archive, pathlib.Path(work))


if __name__ == "__main__":
    main()
