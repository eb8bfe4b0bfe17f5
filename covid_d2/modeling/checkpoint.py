"""Encoder weights exported from resolver pre-training, and loading them into a backbone.

File format (``torch.save``): ``{"format": ENCODER_FORMAT, "model": {key: tensor}, "meta": {...}}``
where the keys are relative to :class:`SpatioTemporalBackbone` (``"spatial.res2.0.conv1.weight"``,
``"temporal..."``, ``"fusions..."``, ``"reduce..."``, ``"blocks..."``).
"""

import logging
import os
import tempfile
from collections import OrderedDict
from typing import Dict, List, Mapping, NamedTuple, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

ENCODER_FORMAT = "covid_d2_encoder_v1"
# Prefix of the backbone inside SpatioTemporalResolver and GeneralizedRCNN state dicts.
BACKBONE_PREFIX = "backbone."
# Backbone parts trained by each resolver phase; the spatial phase leaves the rest random.
PHASE_PARTS = {
    "spatial": ("spatial",),
    "temporal": ("spatial", "temporal", "fusions", "reduce", "blocks"),
}


# Parts of the backbone that are ResNet encoders.
ENCODER_PARTS = ("spatial", "temporal")


class EncoderLoadReport(NamedTuple):
    """Keys of a backbone not found in the file, and keys of the file the backbone lacks."""

    missing_keys: List[str]
    unexpected_keys: List[str]


def export_encoder_state(checkpoint_model: Mapping[str, torch.Tensor],
                         phase: str = "temporal") -> "OrderedDict[str, torch.Tensor]":
    """Select the backbone weights that resolver phase ``phase`` trained.

    ``checkpoint_model`` is a resolver state dict (the ``"model"`` entry of a Detectron2
    checkpoint). Decoders and the stage classifier are dropped; keys lose the ``"backbone."``
    prefix. Raises ``ValueError`` when the phase is unknown or no backbone key is found.
    """
    if phase not in PHASE_PARTS:
        raise ValueError(f"Unknown resolver phase {phase!r}; use one of {sorted(PHASE_PARTS)}.")
    parts = PHASE_PARTS[phase]
    state = OrderedDict()
    for key, value in checkpoint_model.items():
        if not key.startswith(BACKBONE_PREFIX):
            continue
        relative = key[len(BACKBONE_PREFIX):]
        if relative.split(".", 1)[0] in parts:
            state[relative] = value.detach().cpu()
    if not state:
        raise ValueError(
            f"No '{BACKBONE_PREFIX}{{{','.join(parts)}}}.*' weights found in the checkpoint; "
            "is it a SpatioTemporalResolver checkpoint?"
        )
    return state


def save_encoder_weights(state: Mapping[str, torch.Tensor], path: str, meta: Dict) -> None:
    """Write encoder weights to ``path`` atomically (temporary file in its folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".encoder-", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        torch.save({"format": ENCODER_FORMAT, "model": dict(state), "meta": dict(meta)}, tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _summarise(keys: Sequence[str]) -> str:
    """Group keys by their first two name parts, e.g. ``temporal.res3 (12 keys)``."""
    groups: "OrderedDict[str, int]" = OrderedDict()
    for key in keys:
        group = ".".join(key.split(".")[:2])
        groups[group] = groups.get(group, 0) + 1
    return ", ".join(f"{group} ({count} keys)" for group, count in groups.items())


def load_encoder_weights(backbone: nn.Module, path: str) -> EncoderLoadReport:
    """Load encoder weights written by ``tools/export_encoder.py`` into ``backbone``.

    Keys present in both are copied; missing and unexpected keys are logged (WARNING) and
    returned. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` when the file is
    not an encoder export, shares no key with the backbone, a tensor shape differs, or an
    encoder in the file does not match the backbone's key for key (for example a ResNet depth that
    differs from ``MODEL.SPATIO_TEMPORAL.DEPTH``).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Encoder weights {path} not found; export them with tools/export_encoder.py or "
            "set MODEL.SPATIO_TEMPORAL.ENCODER_WEIGHTS to ''."
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != ENCODER_FORMAT:
        raise ValueError(
            f"{path} is not an encoder export (expected format {ENCODER_FORMAT!r}); "
            "run tools/export_encoder.py on the resolver checkpoint first."
        )
    weights = saved["model"]
    own = backbone.state_dict()

    mismatched = [
        f"{key}: file {tuple(weights[key].shape)} vs model {tuple(own[key].shape)}"
        for key in weights if key in own and weights[key].shape != own[key].shape
    ]
    if mismatched:
        raise ValueError(
            f"Encoder weights {path} do not fit this backbone ({len(mismatched)} shape "
            f"mismatches, first: {mismatched[0]}); check MODEL.SPATIO_TEMPORAL.DEPTH, NORM and "
            "FUSION against the resolver config."
        )
    if not any(key in own for key in weights):
        raise ValueError(f"Encoder weights {path} share no key with the backbone.")

    # An encoder part the file has must match completely: a partial match means another depth
    # (R18 keys are a subset of R34 keys, with the same shapes).
    for part in ENCODER_PARTS:
        in_file = {key for key in weights if key.startswith(part + ".")}
        if not in_file:
            continue
        in_model = {key for key in own if key.startswith(part + ".")}
        if in_file != in_model:
            raise ValueError(
                f"The {part} encoder in {path} does not match this backbone's "
                f"({len(in_model - in_file)} keys missing, {len(in_file - in_model)} "
                f"unexpected); check MODEL.SPATIO_TEMPORAL.DEPTH and NORM against the resolver "
                "config."
            )

    result = backbone.load_state_dict(weights, strict=False)
    report = EncoderLoadReport(list(result.missing_keys), list(result.unexpected_keys))
    logger.info("Loaded %d encoder tensors from %s (resolver phase: %s).",
                len(weights) - len(report.unexpected_keys), path,
                saved.get("meta", {}).get("phase", "unknown"))
    if report.missing_keys:
        logger.warning("Keys of the backbone not in %s (left at random init): %s", path,
                       _summarise(report.missing_keys))
    if report.unexpected_keys:
        logger.warning("Keys in %s that the backbone lacks (ignored): %s", path,
                       _summarise(report.unexpected_keys))
    return report
