"""Test-only stage model.py: the production StageEngine wrapped by tests/repos/paced_engine.PacedEngine
(a real model's latency, injected faults). Serves both variants: plain (``execute`` returns responses)
and decoupled ``*_stream`` (one response per token, then the final flag), chosen by the model config.

``install(model_dir, **params)`` puts it over a test repository's ``<model>/1/model.py`` and sets the
parameters (``prefill_ms``, ``token_ms``, ``fault``) in its config.pbtxt. Never part of model_repository/.
"""

# ruff: noqa: E402
import os
import sys

sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import shutil
from pathlib import Path


def install(model_dir: Path, **params: object) -> None:
    """Replace ``model_dir``'s model.py (a copy or a link into model_repository/: unlinked, never written
    through) with this file, and add ``params`` to its config.pbtxt."""
    target = Path(model_dir) / "1" / "model.py"
    target.unlink(missing_ok=True)
    shutil.copy(__file__, target)
    engine = target.with_name("paced_engine.py")  # beside it: the stub imports it from there
    engine.unlink(missing_ok=True)
    shutil.copy(Path(__file__).with_name("paced_engine.py"), engine)
    from optistop.render import pbtxt

    pbtxt.edit(Path(model_dir) / "config.pbtxt", parameters={k: str(v) for k, v in params.items()})


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        from optistop import tensors as T
        from optistop.engines.stage import StageEngine
        from optistop.serving.triton_glue import exit_with_parent, model_parameters

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from paced_engine import PARAMETERS, PacedEngine

        exit_with_parent()
        config, params, model_dir = model_parameters(args)
        engine = StageEngine.from_parameters(params, model_dir)
        self.engine = PacedEngine(engine, {k: v for k, v in params.items() if k in PARAMETERS})
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled"))
        self.inputs = [t.name for t in (T.STAGE_STREAM if self.decoupled else T.STAGE).inputs]
        self.pb, self.name = pb_utils, args["model_name"]
        pb_utils.Logger.log_info(f"{args['model_name']}: paced test stage over {engine.checkpoint} "
                                 f"({', '.join(f'{k}={params[k]}' for k in PARAMETERS if k in params)})")

    def execute(self, requests):
        from optistop.serving.triton_glue import serve_stage, serve_stage_stream

        if not self.decoupled:
            return serve_stage(self.pb, self.name, requests, self.inputs, self.engine.run)
        serve_stage_stream(self.pb, self.name, requests, self.inputs, self.engine.run_streaming)
        return None
