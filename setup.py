"""covid-d2 package metadata.

Dependencies are installed by ``make setup`` (scripts/setup_env.sh) rather than through
``install_requires``, because detectron2 0.6 has no usable PyPI distribution: see
scripts/install_detectron2.py.
"""

from setuptools import find_packages, setup

setup(
    name="covid-d2",
    version="0.1.0",
    description="COVID-19 lesion detection and segmentation in chest CT on Detectron2",
    packages=find_packages(include=["covid_d2", "covid_d2.*"]),
    python_requires=">=3.10",
)
