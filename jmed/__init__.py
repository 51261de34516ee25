"""jmed: adapt open LLMs to Japanese medicine, reproducibly, with MLflow.

Importing jmed is cheap on purpose: torch, peft, bitsandbytes, mlflow and great_expectations are
imported inside the functions that need them, so `jmed --help` and data checks start fast.
"""

import os

__version__ = "0.1.0"

# Side-effect-free defaults the whole system relies on (no telemetry, offline hubs); a user's explicit value wins.
for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)
