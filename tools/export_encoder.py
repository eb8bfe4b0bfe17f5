#!/usr/bin/env python
"""Export the encoders of a SpatioTemporalResolver checkpoint for the detector.

Reads a Detectron2 checkpoint of ``SpatioTemporalResolver`` (``model_final.pth``), keeps the
backbone weights the given phase trained (decoders and the stage classifier are dropped) and
writes them atomically in the format read by ``MODEL.SPATIO_TEMPORAL.ENCODER_WEIGHTS``.

Example::

    python tools/export_encoder.py output/resolver/temporal_R50/model_final.pth \
        output/resolver/temporal_R50/encoder.pth --phase temporal
"""

import argparse
import logging
import os
import sys
from typing import List, Optional

import torch

import covid_d2  # noqa: F401  (applies the detectron2 shims before detectron2 is imported)
from covid_d2.modeling.checkpoint import PHASE_PARTS, export_encoder_state, save_encoder_weights

logger = logging.getLogger("covid_d2.tools.export_encoder")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="resolver checkpoint (.pth) written by the trainer")
    parser.add_argument("output", help="encoder weights file to write (.pth)")
    parser.add_argument(
        "--phase", choices=sorted(PHASE_PARTS), default="temporal",
        help="resolver phase the checkpoint comes from: 'spatial' exports only the spatial "
             "encoder; 'temporal' (default) also the temporal encoder, fusions and neck")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        logger.error("Checkpoint %s not found.", args.checkpoint)
        return 1
    # Trainer checkpoints also pickle scheduler and hook state, so weights_only=False: export
    # only checkpoints you trust.
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model_state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(model_state, dict):
        logger.error("%s contains no state dict; expected a Detectron2 checkpoint with a "
                     "'model' entry.", args.checkpoint)
        return 1

    state = export_encoder_state(model_state, args.phase)
    meta = {
        "phase": args.phase,
        "source": os.path.basename(args.checkpoint),
        "iteration": checkpoint.get("iteration") if isinstance(checkpoint, dict) else None,
    }
    save_encoder_weights(state, args.output, meta)
    dropped = sum(1 for key in model_state if key not in {f"backbone.{k}" for k in state})
    logger.info("Wrote %d encoder tensors to %s (%d other tensors dropped).", len(state),
                args.output, dropped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
