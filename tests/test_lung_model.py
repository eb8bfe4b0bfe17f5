"""Lung U-Net and dense CRF on real slices of the shared Zenodo data."""

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from scipy import ndimage

from covid_d2 import add_covid_config
from covid_d2.lung import (CRFParams, ResidualUNet, crf_refine_slice, fuse_views,
                           keep_lung_components, refine_lung_volume)

CRF_CASE = "case_02"
CRF_SLICES = ["0200.png", "0230.png", "0260.png"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _read_slice(zenodo_root, case, name):
    image = cv2.imread(str(zenodo_root / case / "ct" / name), cv2.IMREAD_GRAYSCALE)
    lung = cv2.imread(str(zenodo_root / case / "lung_mask" / name), cv2.IMREAD_GRAYSCALE) > 127
    return image, lung


@pytest.mark.parametrize("name", CRF_SLICES)
def test_crf_sharpens_blurred_probability(zenodo_root, name):
    image, lung = _read_slice(zenodo_root, CRF_CASE, name)
    blurred = ndimage.gaussian_filter(lung.astype(np.float32), sigma=8)
    dice_before = _dice(blurred >= 0.5, lung)
    refined = crf_refine_slice(blurred, image, CRFParams())
    assert refined.dtype == np.uint8
    assert _dice(refined > 0, lung) > dice_before + 0.005


def test_crf_rejects_float_image(zenodo_root):
    image, lung = _read_slice(zenodo_root, CRF_CASE, CRF_SLICES[0])
    with pytest.raises(ValueError, match="uint8"):
        crf_refine_slice(lung.astype(np.float32), image.astype(np.float32))


def test_fuse_views_averages_and_checks_shape():
    axial = np.full((2, 4, 4), 0.2, dtype=np.float32)
    sagittal = np.full((2, 4, 4), 0.6, dtype=np.float32)
    np.testing.assert_allclose(fuse_views(axial, sagittal), 0.4)
    with pytest.raises(ValueError, match="resample"):
        fuse_views(axial, sagittal[:1])


def test_keep_lung_components_drops_small_blobs():
    mask = np.zeros((4, 20, 20), dtype=np.uint8)
    mask[:, 2:10, 2:8] = 1  # right lung
    mask[:, 2:10, 12:18] = 1  # left lung
    mask[0, 15, 15] = 1  # speck outside the lungs
    kept = keep_lung_components(mask)
    assert kept[:, 2:10, 2:8].all()
    assert kept[:, 2:10, 12:18].all()
    assert kept[0, 15, 15] == 0


def test_refine_volume_fills_vessel_holes(zenodo_root):
    image, lung = _read_slice(zenodo_root, CRF_CASE, CRF_SLICES[1])
    probability = lung.astype(np.float32)
    probability[120:124, 60:64] = 0.0  # a "vessel" hole inside the lung
    assert lung[120:124, 60:64].all(), "the chosen hole must lie inside the lung"
    mask = refine_lung_volume(probability[None], image[None], params=None)
    assert mask[0, 120:124, 60:64].all()


def test_refine_volume_warns_when_no_lung(caplog):
    image = np.zeros((1, 16, 16), dtype=np.uint8)
    mask = refine_lung_volume(np.zeros((1, 16, 16), np.float32), image, params=None)
    assert not mask.any()
    assert "No lung found" in caplog.text


def test_unet_rejects_indivisible_input():
    with pytest.raises(ValueError, match="divisible"):
        ResidualUNet(depth=3)(torch.zeros(1, 1, 36, 36))
    with pytest.raises(ValueError, match="DEPTH"):
        ResidualUNet(depth=1)


def test_unet_downsampling_layers():
    unet = ResidualUNet(depth=4)
    assert [type(layer).__name__ for layer in unet.downsamples] == [
        "Sequential", "Sequential", "MaxPool2d", "MaxPool2d"]
    assert unet.downsamples[0][0].stride == (2, 2)
    assert unet.downsamples[0][0].kernel_size == (2, 2)


def test_lung_unet_loss_falls_on_real_slices(zenodo_root):
    torch.manual_seed(0)
    cfg = get_cfg()
    add_covid_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "LungUNet"
    cfg.MODEL.DEVICE = "cpu"
    cfg.LUNG.UNET.BASE_CHANNELS = 8
    cfg.LUNG.UNET.DEPTH = 3
    model = build_model(cfg)

    batch = []
    for name in CRF_SLICES:
        image, lung = _read_slice(zenodo_root, CRF_CASE, name)
        image = cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)
        lung = cv2.resize(lung.astype(np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST)
        batch.append({"image": torch.from_numpy(image)[None].float(),
                      "sem_seg": torch.from_numpy(lung).long()})

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(25):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])

    model.eval()
    with torch.no_grad():
        output = model(batch[:1])[0]["sem_seg"]
    assert output.shape == (2, 128, 128)
    torch.testing.assert_close(output.sum(dim=0), torch.ones(128, 128))
