"""What the import contracts cannot see: which third-party packages a use really loads."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str) -> set[str]:
    probe = (f"{code}\nimport sys\n"
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.split())


def test_using_a_registered_model_needs_mlflow_but_not_ray_or_the_training_stack():
    # what `iicnet embed --model models:/...` imports: the registry extra (MLflow), no Ray
    loaded = _loaded_after("import iicnet.app.cli, iicnet.app.api, iicnet.registry\n"
                           "from iicnet.registry import models, pyfunc")
    assert "mlflow" in loaded
    assert not loaded & {"ray", "webdataset"}, loaded & {"ray", "webdataset"}


def test_the_model_alone_loads_torch_and_nothing_of_the_services():
    loaded = _loaded_after("import iicnet.model")
    assert "torch" in loaded
    assert not loaded & {"mlflow", "ray", "yaml", "PIL", "boto3", "webdataset"}
