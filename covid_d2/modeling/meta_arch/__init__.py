from covid_d2.modeling.meta_arch.resolver import SpatioTemporalResolver
from covid_d2.modeling.meta_arch.unet_baseline import UNetBaseline, instances_from_probabilities

__all__ = ["SpatioTemporalResolver", "UNetBaseline", "instances_from_probabilities"]
