"""The Triton side of the PyTorch-backend stage (optistop.engines.llmapi_stage): model.yaml -> ``LLM``, one
event loop thread that every request runs on, and the plain and decoupled execute paths.

Used by optistop/engines/triton_models/llmapi_stage.py (copied as each llmapi stage's 1/model.py by
``render --profile llmapi``). ``pb_utils`` is passed in, never imported here.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from optistop import tensors as T
from optistop.engines.llmapi_stage import LlmapiStage, set_visible_gpus
from optistop.serving.request import RequestError
from optistop.serving.triton_glue import error_response, exit_with_parent, model_parameters, read_inputs, response

MODEL_YAML = "model.yaml"      # 1/model.yaml: LLM() arguments plus triton_config (render_llmapi.model_yaml)


def llm_arguments(version_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(LLM() keyword arguments, triton_config) from ``<version_dir>/model.yaml`` (written as JSON)."""
    settings = json.loads((version_dir / MODEL_YAML).read_text(encoding="utf-8"))
    triton = settings.pop("triton_config", {})
    return settings, triton


def checkpoint_ids(checkpoint: Path) -> tuple[int, int, int]:
    """(end id, pad id, vocab size) of an HF checkpoint: defaults for requests that send no end/pad id."""
    cfg = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    gen_path = checkpoint / "generation_config.json"
    gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.exists() else {}
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    end = int(eos[0] if isinstance(eos, list) else eos)
    pad = cfg.get("pad_token_id")
    return end, int(end if pad is None else pad), int(cfg["vocab_size"])


class LlmapiHost:
    def __init__(self, pb_utils: Any, args: dict[str, str]) -> None:
        exit_with_parent()   # this process (and the LLM's workers under it) ends with tritonserver
        config, params, model_dir = model_parameters(args)
        self.pb, self.name = pb_utils, args["model_name"]
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        self.inputs = [t.name for t in (T.STAGE_STREAM if self.decoupled else T.STAGE).inputs]
        set_visible_gpus(params.get("gpu_device_ids", ""))       # before tensorrt_llm is imported
        from tensorrt_llm import LLM, SamplingParams
        from tensorrt_llm.llmapi.llm_utils import update_llm_args_with_extra_dict

        kwargs, _ = llm_arguments(model_dir / "1")
        end, pad, vocab = checkpoint_ids(Path(kwargs["model"]))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"{self.name}-llmapi", daemon=True)
        self.thread.start()
        llm = LLM(**update_llm_args_with_extra_dict({}, kwargs))
        self.stage = LlmapiStage(llm, SamplingParams, end_id=end, pad_id=pad,
                                 max_seq_len=int(kwargs["max_seq_len"]), vocab_size=vocab)
        pb_utils.Logger.log_info(f"{self.name}: LLM API ({kwargs.get('backend')}) on {kwargs['model']}, "
                                 f"GPUs {params.get('gpu_device_ids')}, decoupled={self.decoupled}")

    def execute(self, requests: list[Any]) -> list[Any] | None:
        return self._stream(requests) if self.decoupled else self._whole(requests)

    def _whole(self, requests: list[Any]) -> list[Any]:
        """A dynamic batch: every request goes to the LLM at once (it batches in flight), answered whole."""
        futures = [asyncio.run_coroutine_threadsafe(
            self.stage.generate(read_inputs(self.pb, r, self.inputs), _request_id(r)), self.loop)
            for r in requests]
        out = []
        for f in futures:
            try:
                res = f.result()
            except Exception as exc:   # log the detail, answer plainly; the other requests go on
                self.pb.Logger.log_error(f"{self.name}: request failed: {exc!r}")
                res = RequestError("stage engine failed on this request; see server log", code="INTERNAL")
            out.append(error_response(self.pb, res) if isinstance(res, RequestError) else response(self.pb, res))
        return out

    def _stream(self, requests: list[Any]) -> None:
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for r in requests:
            sender, inputs = r.get_response_sender(), read_inputs(self.pb, r, self.inputs)

            def emit(tensors: dict, sender: Any = sender) -> bool:
                if sender.is_cancelled():     # the caller went away: abort the request
                    return False
                sender.send(response(self.pb, tensors))
                return True

            async def one(inputs: dict = inputs, sender: Any = sender, emit: Any = emit, rid: str = _request_id(r)):
                try:
                    err = await self.stage.stream(inputs, emit, rid)
                except Exception as exc:
                    self.pb.Logger.log_error(f"{self.name}: streaming request failed: {exc!r}")
                    err = RequestError("stage engine failed on this request; see server log", code="INTERNAL")
                if err is None:
                    sender.send(flags=final)
                else:
                    sender.send(error_response(self.pb, err), flags=final)

            asyncio.run_coroutine_threadsafe(one(), self.loop)
        return None

    def close(self) -> None:
        shutdown = getattr(self.stage.llm, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)


def _request_id(request: Any) -> str:
    """The request's id (``request_id()`` in the Python backend), the key of a later ``stop``."""
    rid = request.request_id
    return str(rid() if callable(rid) else rid)
