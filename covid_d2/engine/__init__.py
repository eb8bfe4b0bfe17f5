from covid_d2.engine.launch import launch
from covid_d2.engine.trainer import ResumableTrainer

__all__ = ["ResumableTrainer", "launch"]
