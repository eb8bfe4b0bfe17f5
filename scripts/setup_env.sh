#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) with everything covid-d2 needs.
# Idempotent: a second run only checks what is already installed. Used by `make setup`, by CI
# (.ci/run) and by developers alike.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating virtual environment $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# pip 26 rejects the pb1-detectron2 sdist because its 'all' extra declares a URL dependency.
"$PY" -m pip install -q "pip>=23,<26"
"$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
# detectron2.model_zoo imports pkg_resources, which setuptools 81+ no longer ships.
"$PY" -m pip install -q "setuptools==80.9.0" wheel
"$PY" -m pip install -q -r requirements.txt

if "$PY" -c "import detectron2" 2>/dev/null; then
    echo "detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)') already installed"
else
    "$PY" scripts/install_detectron2.py --cache-dir .cache
fi

"$PY" -m pip install -q --no-deps --no-build-isolation -e .
"$PY" -c "import covid_d2, detectron2, torch; print('covid_d2', covid_d2.__version__, '| detectron2', detectron2.__version__, '| torch', torch.__version__)"
