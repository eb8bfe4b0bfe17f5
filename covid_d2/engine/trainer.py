"""A ``DefaultTrainer`` whose checkpoints restore the optimizer state on every detectron2."""

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
