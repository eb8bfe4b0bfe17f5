"""Configuration keys added by covid-d2 to Detectron2's ``CfgNode``.

Each section has its own function so that the keys of one stage sit together. Every key has a
comment stating what it sets and in what unit.
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
    # Normalisation of input CT to 8 bit: "minmax_clahe" (per-slice min-max + CLAHE, as the
    # Zenodo PNG training set), "hu_window" (HU window below) or "none" (already normalised).
    cfg.INPUT.CT.NORMALIZATION = "minmax_clahe"
    # HU window centre and width for "hu_window" (lung window), in HU.
    cfg.INPUT.CT.WINDOW_LEVEL = -600.0
    cfg.INPUT.CT.WINDOW_WIDTH = 1500.0
    # CLAHE contrast clip limit and tile grid (rows, columns of tiles) for "minmax_clahe".
    cfg.INPUT.CT.CLAHE_CLIP_LIMIT = 7.0
    cfg.INPUT.CT.CLAHE_TILE_GRID = (8, 8)
    # DICOM series to read from a folder with several: a SeriesNumber, "largest" or "" (raise).
    cfg.INPUT.CT.DICOM_SERIES = ""


def _add_lung_config(cfg: CN) -> None:
    """Lung U-Net, view fusion, dense CRF and ROI preprocessing (cfg.LUNG)."""
    cfg.LUNG = CN()
    # Cases root (tools/prepare_data.py output with splits.json) the lung datasets are built from.
    cfg.LUNG.CASES_ROOT = "datasets/cases"
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
    # Pixel connectivity that joins lesion pixels into one instance: 4 (edges) or 8 (edges and corners).
    cfg.INPUT.THREE_SLICE.CONNECTIVITY = 8
    # Lesion components smaller than this (pixels, on the exported slice) get no annotation.
    cfg.INPUT.THREE_SLICE.MIN_LESION_AREA = 4
    # Training augmentation, applied identically to the three channels and to every mask.
    # Master switch; False keeps only the resize of INPUT.MIN_SIZE_TRAIN.
    cfg.INPUT.THREE_SLICE.AUGMENT = True
    # Maximum shift along each image axis, as a fraction of that side (0.05 = 5 %).
    cfg.INPUT.THREE_SLICE.TRANSLATE_FRACTION = 0.05
    # Range of the isotropic scale factor, sampled uniformly (1.0 = no scaling).
    cfg.INPUT.THREE_SLICE.SCALE_RANGE = (0.9, 1.1)
    # Maximum rotation in degrees about the image centre, sampled uniformly in [-x, x].
    cfg.INPUT.THREE_SLICE.ROTATION_DEGREES = 10.0
    # Probability of a left-right flip (column axis); the lungs are roughly mirror images.
    cfg.INPUT.THREE_SLICE.HFLIP_PROB = 0.5
    # Probability of an anterior-posterior flip (row axis); 0 by default because it is anatomically implausible.
    cfg.INPUT.THREE_SLICE.VFLIP_PROB = 0.0
    # Probability that a training sample becomes a 2x2 mosaic of four key slices ("merge slices").
    cfg.INPUT.THREE_SLICE.MOSAIC_PROB = 0.0
    # CSV of stage labels (columns case_id, stage and optional slice_index, lesion_index); "" = none.
    cfg.INPUT.THREE_SLICE.STAGE_CSV = ""
    # Proxy stages 1/2/3 from the lung-involvement fraction; NOT clinical stages, so off by default.
    cfg.INPUT.THREE_SLICE.PROXY_STAGES = False
    # Involvement fractions (lesion / lung pixels) that separate proxy stage 1 from 2 and 2 from 3.
    cfg.INPUT.THREE_SLICE.PROXY_STAGE_THRESHOLDS = (0.05, 0.25)
    # Involvement measured over the whole "case" or per key "slice".
    cfg.INPUT.THREE_SLICE.PROXY_STAGE_LEVEL = "case"
    # Lesion datasets keep their lesion-free slices as negatives, so detectron2 must not drop
    # images without annotations. Configs may set it back to True for other datasets.
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False


def _add_model_config(cfg: CN) -> None:
    """Spatio-temporal backbone, resolver, tiny U-Net mask head and baselines (cfg.MODEL.*)."""
    st = cfg.MODEL.SPATIO_TEMPORAL = CN()
    # "spatio_temporal" (spatial + temporal encoders) or "spatial" (no temporal encoder).
    st.MODE = "spatio_temporal"
    # ResNet depth of both encoders: 18, 34, 50 or 101.
    st.DEPTH = 50
    # Norm layer of encoders, fusion and neck: "GN" (from scratch, small batches), "BN", "".
    st.NORM = "GN"
    # How spatial maps enter the temporal encoder: "sum" or "concat" (+ 1x1 conv back to C).
    st.FUSION = "sum"
    # Channels of the stride-16 output feature "st".
    st.OUT_CHANNELS = 256
    # Residual conv blocks (two 3x3 convs each) after the 1x1 reduction to OUT_CHANNELS.
    st.NUM_RESIDUAL_BLOCKS = 2
    # Encoder weights from tools/export_encoder.py, loaded by path; "" keeps the random init.
    st.ENCODER_WEIGHTS = ""

    resolver = cfg.MODEL.RESOLVER = CN()
    # Pre-training phase: "spatial" (spatial encoder-decoder) or "temporal" (spatial frozen).
    resolver.PHASE = "spatial"
    # Number of slice-level disease stages (0 healthy, 1 early, 2 advanced, 3 severe).
    resolver.NUM_STAGES = 4
    # Output widths of the four x2 decoder steps (strides 8, 4, 2, 1); multiples of 32 for GN.
    resolver.DECODER_CHANNELS = [256, 128, 64, 32]
    # Weight of the per-pixel binary cross-entropy lesion loss.
    resolver.CE_LOSS_WEIGHT = 1.0
    # Weight of the soft Dice lesion loss.
    resolver.DICE_LOSS_WEIGHT = 1.0
    # Weight of the stage cross-entropy (temporal phase; samples with stage -1 are ignored).
    resolver.STAGE_LOSS_WEIGHT = 0.5

    unet = cfg.MODEL.ROI_MASK_HEAD.TINY_UNET = CN()
    # Channels of the first U-Net level; each downsampling doubles them.
    unet.BASE_CHANNELS = 32
    # Downsamplings (and as many upsamplings) of the RoI features.
    unet.NUM_LEVELS = 3
    # Conv + norm + ReLU layers per residual block.
    unet.CONVS_PER_BLOCK = 4
    # Norm layer of the mask head: "BN", "GN" or "".
    unet.NORM = "BN"
    # Upsample the output x2 with a transposed conv (mask size 2 x POOLER_RESOLUTION).
    unet.UPSAMPLE_OUTPUT = True

    # Classify each lesion RoI by stage (NUM_CLASSES 3: early, advanced, severe) in
    # LesionROIHeads; needs gt_stages 1..3 on every lesion.
    cfg.MODEL.ROI_HEADS.STAGE_AS_CLASS = False

    baseline = cfg.MODEL.UNET_BASELINE = CN()
    # ResNet depth of the whole-image U-Net encoder.
    baseline.DEPTH = 50
    # Norm layer of the U-Net encoder and decoder.
    baseline.NORM = "GN"
    # Output widths of the five x2 decoder steps (strides 16, 8, 4, 2, 1).
    baseline.DECODER_CHANNELS = [256, 128, 64, 32, 32]
    # Lesion probability at or above which a pixel is foreground at inference.
    baseline.SCORE_THRESH_TEST = 0.5
    # Connected components smaller than this many pixels (output size) are dropped.
    baseline.MIN_AREA_TEST = 4
    # Weight of the per-pixel binary cross-entropy loss.
    baseline.CE_LOSS_WEIGHT = 1.0
    # Weight of the soft Dice loss.
    baseline.DICE_LOSS_WEIGHT = 1.0


def _add_evaluation_config(cfg: CN) -> None:
    """Lesion evaluator settings (cfg.TEST.LESION)."""
    cfg.TEST.LESION = CN()
    # Predictions with a score below this are ignored by every lesion metric (0..1).
    cfg.TEST.LESION.SCORE_THRESH = 0.5
    # A predicted and a ground-truth lesion match when their IoU is strictly above this.
    cfg.TEST.LESION.IOU_THRESH = 0.5
    # IoU used for lesion matching: "box" or "mask".
    cfg.TEST.LESION.MATCH_BY = "box"
    # A ground-truth lesion is tiny below this fraction of the slice area (0.059 %, ~154 px at 512x512).
    cfg.TEST.LESION.TINY_FRACTION = 0.00059
