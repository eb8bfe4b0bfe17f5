"""Configuration keys added by covid-d2 to Detectron2's ``CfgNode``.

Each section has its own function so that the keys of one stage sit together; every key has a
comment saying what it sets and in what unit.
"""

from detectron2.config import CfgNode as CN


def add_covid_config(cfg: CN) -> None:
    """Add every covid-d2 config key, with its default, to ``cfg`` in place."""
    cfg.COVID = CN()
    # Root folder of the public data sets; "" means $COVID_D2_DATA or ../shared/data.
    cfg.COVID.DATA_ROOT = ""
    _add_input_config(cfg)
    _add_lung_config(cfg)
    _add_dataset_config(cfg)
    _add_model_config(cfg)
    _add_evaluation_config(cfg)


def _add_input_config(cfg: CN) -> None:
    """CT reading and intensity normalisation (cfg.INPUT.CT)."""
    cfg.INPUT.CT = CN()


def _add_lung_config(cfg: CN) -> None:
    """Lung U-Net, view fusion, dense CRF and ROI preprocessing (cfg.LUNG)."""
    cfg.LUNG = CN()
    # View the lung U-Net is trained on: "axial" slices or "sagittal" reconstructions.
    cfg.LUNG.VIEW = "axial"
    # Intensity kind the U-Net's training data has ("minmax_clahe_uint8" or "hu"). Inference
    # refuses volumes of another kind unless they are converted the same way first.
    cfg.LUNG.INTENSITY_KIND = "minmax_clahe_uint8"
    # Side of the square network input in pixels; slices and reconstructions are resized to it.
    cfg.LUNG.INPUT_SIZE = 256

    cfg.LUNG.UNET = CN()
    # Channels at full resolution; doubled at every downsampling.
    cfg.LUNG.UNET.BASE_CHANNELS = 16
    # Number of downsamplings (the first two are 2x2 stride-2 convolutions, the rest max-pooling).
    cfg.LUNG.UNET.DEPTH = 4
    # GroupNorm groups (capped at a layer's channel count).
    cfg.LUNG.UNET.NORM_GROUPS = 8
    # Weights of the Dice and cross-entropy terms of the training loss.
    cfg.LUNG.UNET.DICE_WEIGHT = 1.0
    cfg.LUNG.UNET.CE_WEIGHT = 1.0

    cfg.LUNG.AUGMENT = CN()
    # HU window augmentation: level and width (HU) sampled uniformly within +-JITTER around
    # these centres for HU training data.
    cfg.LUNG.AUGMENT.WINDOW_LEVEL = -500.0
    cfg.LUNG.AUGMENT.WINDOW_WIDTH = 1600.0
    cfg.LUNG.AUGMENT.WINDOW_LEVEL_JITTER = 100.0
    cfg.LUNG.AUGMENT.WINDOW_WIDTH_JITTER = 300.0
    # For normalised (uint8) training data: random gamma range and contrast scale range.
    cfg.LUNG.AUGMENT.GAMMA_RANGE = (0.7, 1.4)
    cfg.LUNG.AUGMENT.CONTRAST_RANGE = (0.8, 1.2)
    # Random scale range, maximum shift (fraction of the side) and flip probability.
    cfg.LUNG.AUGMENT.SCALE_RANGE = (0.9, 1.1)
    cfg.LUNG.AUGMENT.MAX_SHIFT = 0.05
    cfg.LUNG.AUGMENT.FLIP_PROB = 0.5

    cfg.LUNG.CRF = CN()
    # Run the dense CRF after fusing the views (False keeps the thresholded fused probability).
    cfg.LUNG.CRF.ENABLED = True
    # Appearance kernel: weight, position sigma (pixels) and intensity sigma (grey levels 0..255).
    cfg.LUNG.CRF.APPEARANCE_WEIGHT = 8.0
    cfg.LUNG.CRF.APPEARANCE_XY_SIGMA = 10.0
    cfg.LUNG.CRF.APPEARANCE_INTENSITY_SIGMA = 10.0
    # Smoothness kernel: weight and position sigma (pixels).
    cfg.LUNG.CRF.SMOOTHNESS_WEIGHT = 3.0
    cfg.LUNG.CRF.SMOOTHNESS_XY_SIGMA = 3.0
    # Mean-field iterations.
    cfg.LUNG.CRF.ITERATIONS = 5
    # Largest 3D components kept as lungs, and the minimum size of a further component relative
    # to the largest.
    cfg.LUNG.CRF.MAX_COMPONENTS = 2
    cfg.LUNG.CRF.MIN_RELATIVE_SIZE = 0.1

    cfg.LUNG.ROI = CN()
    # Dilation of the lung mask (mm in-plane; pixels when the spacing is unknown) before masking.
    cfg.LUNG.ROI.DILATION_MM = 5.0
    # Margin around the lung bounding box kept in the crop (pixels).
    cfg.LUNG.ROI.MARGIN_PX = 8
    # Value written outside the dilated lung mask (grey level for uint8 data, HU for HU data).
    cfg.LUNG.ROI.BACKGROUND_UINT8 = 0
    cfg.LUNG.ROI.BACKGROUND_HU = -1024.0


def _add_dataset_config(cfg: CN) -> None:
    """Three-slice lesion datasets and their mapper (cfg.INPUT.THREE_SLICE)."""
    cfg.INPUT.THREE_SLICE = CN()


def _add_model_config(cfg: CN) -> None:
    """Spatio-temporal backbone, resolver, tiny U-Net mask head and baselines (cfg.MODEL.*)."""


def _add_evaluation_config(cfg: CN) -> None:
    """Lesion evaluator settings (cfg.TEST.LESION)."""
    cfg.TEST.LESION = CN()
