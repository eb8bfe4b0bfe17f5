"""A ``DefaultTrainer`` whose checkpoints restore the optimizer state on every detectron2."""

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer
from detectron2.engine.train_loop import TrainerBase

# detectron2 0.6 saves only the iteration and hook states (the LR scheduler) of a
# DefaultTrainer, not the optimizer of the SimpleTrainer inside it, so SGD momentum restarts
# from zero on --resume. Later detectron2 versions store it under "_trainer"; use the same key.
_UPSTREAM_SAVES_OPTIMIZER = DefaultTrainer.state_dict is not TrainerBase.state_dict


class ResumableTrainer(DefaultTrainer):
    """``DefaultTrainer`` that checkpoints and restores the optimizer state.

    On a detectron2 that already stores the optimizer, this class changes nothing.
    """

    def state_dict(self):
        state = super().state_dict()
        if not _UPSTREAM_SAVES_OPTIMIZER:
            state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if not _UPSTREAM_SAVES_OPTIMIZER and "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])


def train_or_evaluate(trainer_class, cfg, eval_only: bool, resume: bool):
    """Train with ``trainer_class``, or with ``eval_only`` load ``cfg.MODEL.WEIGHTS`` and test.

    ``resume`` continues from the last checkpoint in ``cfg.OUTPUT_DIR``, as Detectron2's
    ``--resume`` does. Returns the trainer's results (the test results when evaluating).
    """
    if eval_only:
        model = trainer_class.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=resume)
        return trainer_class.test(cfg, model)
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer.train()
