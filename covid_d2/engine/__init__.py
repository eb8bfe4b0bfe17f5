from covid_d2.engine.launch import launch
from covid_d2.engine.setup import covid_setup, load_covid_config
from covid_d2.engine.trainer import ResumableTrainer, train_or_evaluate

__all__ = ["ResumableTrainer", "covid_setup", "launch", "load_covid_config", "train_or_evaluate"]
