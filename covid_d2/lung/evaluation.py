"""Validation Dice of the lung U-Net, as a Detectron2 ``DatasetEvaluator``."""

import itertools
import logging
from collections import OrderedDict

import numpy as np
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

logger = logging.getLogger(__name__)


class LungDiceEvaluator(DatasetEvaluator):
    """Dice of the predicted lung (class-1 probability >= 0.5) against ``sem_seg`` of each input.

    Reports ``mean_dice`` (mean over images that have lung in the target or the prediction) and
    ``global_dice`` (``2 |P & G| / (|P| + |G|)`` summed over all pixels of the data set), both
    on the network input grid (``cfg.LUNG.INPUT_SIZE``), gathered across workers.
    """

    def __init__(self, dataset_name: str):
        self.dataset_name = dataset_name
        self.reset()

    def reset(self):
        self._counts = []

    def process(self, inputs, outputs):
        for item, output in zip(inputs, outputs):
            predicted = (output["sem_seg"][1] >= 0.5).cpu().numpy()
            target = item["sem_seg"].cpu().numpy() > 0
            self._counts.append((int(np.logical_and(predicted, target).sum()),
                                 int(predicted.sum()), int(target.sum())))

    def evaluate(self):
        counts = list(itertools.chain(*comm.gather(self._counts, dst=0)))
        if not comm.is_main_process():
            return {}
        per_image = [2.0 * both / (pred + true) for both, pred, true in counts if pred + true]
        both, pred, true = (sum(column) for column in zip(*counts)) if counts else (0, 0, 0)
        results = OrderedDict(lung=OrderedDict(
            mean_dice=float(np.mean(per_image)) if per_image else "n/a",
            global_dice=2.0 * both / (pred + true) if pred + true else "n/a",
            images=len(counts),
        ))
        logger.info("Lung Dice on %s: %s", self.dataset_name, dict(results["lung"]))
        return results
