"""Smoke tests of the benchmark scripts: argument parsing and small helpers, no timing asserts."""

import importlib.util
import math
import pathlib
import sys

import pytest
import torch

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speed():
    return _load("speed")


@pytest.fixture(scope="module")
def ablation():
    return _load("ablation")


@pytest.fixture(scope="module")
def common():
    return _load("common")


def test_speed_quick_defaults(speed):
    args = speed.parse_args(["--quick"])
    assert args.repeats == 2
    assert args.sizes == [256, 512]
    assert args.device == "cpu"


def test_speed_rejects_zero_repeats(speed):
    with pytest.raises(SystemExit):
        speed.parse_args(["--repeats", "-1"])


def test_speed_ratio_to_stock(speed):
    assert speed.ratio_to(3.0, 2.0) == pytest.approx(1.5)


def test_speed_ratio_zero_reference(speed):
    assert math.isnan(speed.ratio_to(1.0, 0.0))


def test_speed_default_checkpoint(speed, tmp_path):
    present = tmp_path / "model_final.pth"
    present.write_bytes(b"")
    assert speed.default_checkpoint(None, present) == str(present)
    assert speed.default_checkpoint(None, tmp_path / "missing.pth") == ""
    assert speed.default_checkpoint("given.pth", present) == "given.pth"


def test_ablation_quick_defaults(ablation):
    args = ablation.parse_args(["--quick", "--work-dir", "/tmp/unused"])
    assert args.iters == 20
    assert args.resolver_iters == 10
    assert args.eval_stride == 6
    assert args.models == ["full", "spatial", "mask_rcnn", "unet"]


def test_ablation_schedule_opts(ablation):
    opts = dict(zip(*[iter(ablation.schedule_opts(100))] * 2))
    assert opts["SOLVER.MAX_ITER"] == "100"
    assert opts["SOLVER.STEPS"] == "(75,)"
    assert opts["SOLVER.CHECKPOINT_PERIOD"] == "100"
    assert dict(zip(*[iter(ablation.schedule_opts(800))] * 2))["SOLVER.CHECKPOINT_PERIOD"] == "200"
    assert opts["DATASETS.TEST"] == "()"


def test_ablation_coco_numbering(ablation):
    annotation = {"category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}
    coco = ablation._coco([({"file_name": "a.png"}, [annotation, annotation]), ({"file_name": "b.png"}, [annotation])],
                          "test")
    assert [image["id"] for image in coco["images"]] == [1, 2]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3]
    assert [a["image_id"] for a in coco["annotations"]] == [1, 1, 2]


def test_common_median_seconds_calls(common):
    calls = []
    result = common.median_seconds(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5
    assert result["min_s"] <= result["median_s"] <= result["max_s"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_common_cuda_without_gpu(common):
    with pytest.raises(SystemExit, match="CUDA is not available"):
        common.check_device("cuda")


@pytest.fixture(scope="module")
def proposals_ap():
    return _load("proposals_ap")


def test_proposals_rejects_zero_topk(proposals_ap):
    with pytest.raises(SystemExit):
        proposals_ap.parse_args(["--topk", "500", "0"])


def test_proposals_missing_weights_message(proposals_ap, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("")
    args = proposals_ap.parse_args(["--config-file", str(config), "--weights", str(tmp_path / "absent.pth")])
    with pytest.raises(SystemExit, match="absent.pth not found"):
        proposals_ap.check_inputs(args)


def test_proposals_forward_timer_counts_images(proposals_ap):
    class Identity(torch.nn.Module):
        def forward(self, batched_inputs):
            return batched_inputs

    model = Identity()
    timer = proposals_ap.ForwardTimer(model, "cpu")
    model([{"image": 0}, {"image": 1}])
    model([{"image": 2}])
    assert timer.images == 3
    assert timer.seconds >= 0.0


def _fake_training(ablation, monkeypatch, tmp_path, reuse):
    run_dir = tmp_path / "full"
    run_dir.mkdir()
    (run_dir / "model_final.pth").write_bytes(b"old")
    (run_dir / "bench_train.json").write_text('{"wall_s": 5.0}')
    calls = []

    def fake_run_python(command, log_path, env):
        calls.append(command)
        return {"wall_s": 1.0}

    monkeypatch.setattr(ablation.common, "run_python", fake_run_python)
    args = ablation.parse_args(["--quick", "--work-dir", str(tmp_path)] + (["--reuse"] if reuse else []))
    record = ablation.train_model(args, "full", "configs/lesion/cpu/st_R18.yaml", {})
    return run_dir, calls, record


def test_ablation_retrains_finished_run(ablation, monkeypatch, tmp_path):
    run_dir, calls, record = _fake_training(ablation, monkeypatch, tmp_path, reuse=False)
    assert len(calls) == 1
    assert "--resume" in calls[0]
    assert not (run_dir / "model_final.pth").exists()
    assert record["wall_s"] == 1.0


def test_ablation_reuse_keeps_finished_run(ablation, monkeypatch, tmp_path):
    run_dir, calls, record = _fake_training(ablation, monkeypatch, tmp_path, reuse=True)
    assert calls == []
    assert (run_dir / "model_final.pth").read_bytes() == b"old"
    assert record["wall_s"] == 5.0
