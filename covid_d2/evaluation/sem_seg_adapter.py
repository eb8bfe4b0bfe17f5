"""Score semantic lesion maps with instance evaluators, via connected components."""

from detectron2.evaluation import DatasetEvaluator

from covid_d2.modeling.meta_arch.unet_baseline import instances_from_probabilities


class SemSegAsInstances(DatasetEvaluator):
    """Wrap an instance evaluator so it scores models that output ``sem_seg`` lesion maps.

    Each output's ``sem_seg`` (2, H, W) [background, lesion] probabilities becomes
    ``instances``: one per 8-connected component of pixels with lesion probability >=
    ``threshold`` and at least ``min_area`` pixels, as the U-Net baseline does.
    """

    def __init__(self, evaluator: DatasetEvaluator, threshold: float = 0.5, min_area: int = 4):
        self.evaluator = evaluator
        self.threshold = threshold
        self.min_area = min_area

    def reset(self):
        self.evaluator.reset()

    def process(self, inputs, outputs):
        converted = []
        for output in outputs:
            if "instances" in output:
                converted.append(output)
                continue
            instances = instances_from_probabilities(output["sem_seg"][1], self.threshold,
                                                     self.min_area)
            converted.append({**output, "instances": instances})
        self.evaluator.process(inputs, converted)

    def evaluate(self):
        return self.evaluator.evaluate()
