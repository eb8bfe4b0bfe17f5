"""tools/train_net.py as a user runs it: train, evaluate, resume after a kill, two processes.

The datasets are a small real export: Zenodo case_05 for training and case_06 for validation.
Every run is a subprocess of the real command line on CPU at 128 px with the ResNet-18 config.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from covid_d2.data.coco_export import ExportOptions, export_cases
from covid_d2.data.converters import zenodo
from covid_d2.data.volume import save_case

REPO = pathlib.Path(__file__).resolve().parent.parent
TRAIN_NET = REPO / "tools" / "train_net.py"
CONFIG = REPO / "configs" / "lesion" / "cpu" / "st_R18.yaml"
SMALL_INPUT = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "()", "TEST.EVAL_PERIOD", "0",
]


@pytest.fixture(scope="module")
def export_root(tmp_path_factory, shared_data):
    """Datasets root with covid_zenodo_train (case_05) and covid_zenodo_val (case_06)."""
    root = tmp_path_factory.mktemp("train_net_data")
    cases = root / "cases"
    for case_id in ("zenodo_case_05", "zenodo_case_06"):
        save_case(zenodo.convert_case(shared_data, case_id), cases / case_id)
    (cases / "splits.json").write_text(json.dumps({"train": ["zenodo_case_05"],
                                                   "val": ["zenodo_case_06"]}))
    export_cases(cases, root / "covid_lesion", "all", ExportOptions())
    assert (root / "covid_lesion" / "covid_zenodo_train.json").is_file()
    return root


def _env(export_root):
    env = dict(os.environ)
    env["COVID_D2_DATASETS"] = str(export_root)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _command(output_dir, flags=(), opts=()):
    return [sys.executable, str(TRAIN_NET), "--config-file", str(CONFIG), *flags,
            *SMALL_INPUT, "OUTPUT_DIR", str(output_dir), *opts]


def _run(export_root, output_dir, flags=(), opts=(), timeout=600):
    command = _command(output_dir, flags, opts)
    result = subprocess.run(command, env=_env(export_root), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _metrics(output_dir):
    lines = (output_dir / "metrics.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_train_then_eval_only(export_root, tmp_path):
    _run(export_root, tmp_path, opts=["SOLVER.MAX_ITER", "3"])
    assert (tmp_path / "model_final.pth").is_file()
    iterations = [row["iteration"] for row in _metrics(tmp_path) if "total_loss" in row]
    assert max(iterations) == 2

    result = _run(export_root, tmp_path, flags=["--eval-only"],
                  opts=["MODEL.WEIGHTS", str(tmp_path / "model_final.pth")])
    lesion_json = tmp_path / "inference" / "covid_zenodo_val" / "lesion_metrics.json"
    assert lesion_json.is_file()
    metrics = json.loads(lesion_json.read_text())
    assert "lesion_sensitivity" in json.dumps(metrics)
    assert "copypaste: Task: bbox" in result.stdout + result.stderr


def test_resume_after_kill(export_root, tmp_path):
    command = _command(tmp_path, opts=["SOLVER.MAX_ITER", "200", "SOLVER.CHECKPOINT_PERIOD", "3"])
    process = subprocess.Popen(command, env=_env(export_root), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = tmp_path / "model_0000005.pth"
    deadline = time.time() + 400
    try:
        while not checkpoint.is_file() and time.time() < deadline and process.poll() is None:
            time.sleep(1)
        assert checkpoint.is_file(), "training did not reach its second checkpoint in time"
        time.sleep(1)  # let the checkpointer finish writing last_checkpoint
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (tmp_path / "model_final.pth").exists()

    last = (tmp_path / "last_checkpoint").read_text().strip()
    saved_iteration = int(last.split("_")[1].split(".")[0])
    result = _run(export_root, tmp_path, flags=["--resume"],
                  opts=["SOLVER.MAX_ITER", str(saved_iteration + 3), "SOLVER.CHECKPOINT_PERIOD", "3"])
    assert f"Starting training from iteration {saved_iteration + 1}" in result.stdout + result.stderr
    assert (tmp_path / "model_final.pth").is_file()


def test_two_cpu_processes_with_gloo(export_root, tmp_path):
    result = _run(export_root, tmp_path, flags=["--num-gpus", "2"],
                  opts=["SOLVER.MAX_ITER", "2"])
    assert "World size: 2" in result.stdout + result.stderr
    assert (tmp_path / "model_final.pth").is_file()


def test_missing_dataset_is_named(export_root, tmp_path):
    command = _command(tmp_path, opts=["DATASETS.TRAIN", "('no_such_dataset',)"])
    result = subprocess.run(command, env=_env(export_root), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "no_such_dataset" in result.stderr
    assert "tools/export_coco.py" in result.stderr
