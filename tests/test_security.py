"""Trust boundaries: nothing read from the tracking store runs as code (issue 15)."""
import pickle
import re
from pathlib import Path

import pytest

from jmed.config import TrainConfig
from jmed.train import TrainError, train

ROOT = Path(__file__).resolve().parent.parent
MARKER = Path("/tmp") / "jmed-planted-pickle-ran"


class Payload:
    """Unpickling this runs a shell command that creates MARKER."""

    def __reduce__(self):
        import os

        return (os.system, (f"touch {MARKER}",))


def test_resume_refuses_a_planted_pickle_and_runs_nothing(tracking, tmp_path):
    import mlflow

    MARKER.unlink(missing_ok=True)
    stopped = train(TrainConfig(batch_size=4, max_steps=6, checkpoint_every=2, stop_after=3))
    client = mlflow.MlflowClient()
    planted = tmp_path / "optimizer.pt"
    planted.write_bytes(pickle.dumps(Payload()))
    client.log_artifact(stopped, str(planted), "checkpoints/step-000003")
    with pytest.raises(TrainError, match=r"step-000003: it holds pickled state \(optimizer\.pt\), which jmed never "
                                         r"loads"):
        train(TrainConfig(resume_from=stopped))
    assert not MARKER.exists()  # nothing was unpickled
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert all(r.info.status != "RUNNING" for r in runs)


def test_checkpoint_state_holds_only_safetensors_and_json(tracking):
    import mlflow

    run = train(TrainConfig(batch_size=4, max_steps=4, checkpoint_every=2))
    files = {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(run, "checkpoints/step-000002")}
    assert files == {"adapter", "state.safetensors", "state.json", "trainer_state.json"}


# Source rule: no deserialisation of code and no shell in the package (comments and strings included,
# so that a future use cannot hide). `.eval()` (torch's eval mode) is a method call, not the builtin.
FORBIDDEN = [r"\bpickle\b", r"\bcloudpickle\b", r"weights_only\s*=\s*False", r"(?<![\w.])eval\(",
             r"(?<![\w.])exec\(", r"shell\s*=\s*True", r"\btorch\.load\("]


def test_package_source_has_no_pickle_eval_exec_or_shell():
    hits = []
    for path in sorted((ROOT / "jmed").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            hits += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for pat in FORBIDDEN if re.search(pat, line)]
    assert hits == []
