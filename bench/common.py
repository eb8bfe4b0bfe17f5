"""Helpers shared by the benchmark scripts: device checks, timing, subprocesses, machine facts.

The scripts in ``bench/`` print figures; they are not tests. Timings here are wall-clock seconds
from ``time.perf_counter``. On CUDA the device is synchronised before each clock read, so that
queued kernels count toward the step that launched them.
"""

import importlib.util
import logging
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

logger = logging.getLogger("covid_d2.bench.common")

REPO = pathlib.Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"


def check_device(device: str) -> str:
    """Return ``device`` if torch can use it; raise ``SystemExit`` with the fix otherwise.

    Unlike the covid-d2 tools, a benchmark never falls back to the CPU: a CPU figure labelled
    as a GPU figure would be wrong.
    """
    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise SystemExit(f"--device {device!r} is invalid; use 'cpu' or 'cuda' (or 'cuda:N').")
    if not torch.cuda.is_available():
        raise SystemExit(
            f"--device {device} was given but CUDA is not available (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}). Run on a machine with a GPU, or use --device cpu."
        )
    return device


def set_threads(threads: Optional[int]) -> int:
    """Set torch's intra-op threads (default: the number of CPU cores) and return the count."""
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


def synchronize(device: str) -> None:
    """Wait for queued CUDA work on ``device``; does nothing on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: str = "cpu") -> float:
    """Run ``function`` once and return its wall time in seconds."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def median_seconds(function: Callable[[], object], repeats: int, warmup: int = 1,
                   device: str = "cpu") -> Dict[str, float]:
    """Time ``function``: ``warmup`` untimed runs, then the median, min and max of ``repeats`` runs (s)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    for _ in range(warmup):
        function()
    times = [timed(function, device) for _ in range(repeats)]
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": float(repeats)}


def cpu_model_name() -> str:
    """Return the CPU model name from ``lscpu`` (``platform.processor()`` when lscpu is missing)."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_summary(device: str, threads: int) -> str:
    """Return one line naming the CPU, core count, GPU (if used), torch version and threads."""
    parts = [f"CPU {cpu_model_name()} ({os.cpu_count()} cores)", f"torch {torch.__version__}",
             f"{threads} torch threads"]
    if device.startswith("cuda"):
        parts.insert(1, f"GPU {torch.cuda.get_device_name(device)}")
    load = os.getloadavg()[0]
    parts.append(f"1-min load average {load:.1f}")
    return ", ".join(parts)


def subprocess_env(threads: int, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Return the environment for a benchmarked subprocess: unbuffered, ``threads`` OpenMP threads."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    env.update(extra or {})
    return env


def run_python(arguments: Sequence[str], log_path: pathlib.Path, env: Dict[str, str]) -> Dict[str, float]:
    """Run ``python ARGUMENTS`` from the checkout, output to ``log_path``; return wall s and peak RSS.

    The peak resident set size (MiB) is the child's own ``ru_maxrss`` from ``os.wait4``, so
    other children of this process do not count. Raises ``SystemExit`` with the log's tail when
    the command fails.
    """
    log_path = pathlib.Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command: List[str] = [sys.executable, *[str(a) for a in arguments]]
    logger.info("Running %s (log: %s)", " ".join(command), log_path)
    with open(log_path, "w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}; its "
                         f"log {log_path} ends with:\n{tail}")
    # Linux reports ru_maxrss in KiB.
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024.0}


def load_trainer_class():
    """Import the ``Trainer`` of tools/train_net.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("covid_d2_train_net", REPO / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Trainer
