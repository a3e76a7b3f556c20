"""optistop.render.pbtxt: configs built, written, read and edited as Triton ModelConfig messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from optistop.render import pbtxt
from optistop.tensors import STAGE, STAGE_STREAM

ROOT = Path(__file__).resolve().parents[2]
CASCADE_CONFIG = ROOT / "model_repository" / "cascade" / "config.pbtxt"
ODD = 'a "quoted" value\\with a backslash,\na newline, a tab\tand ünïcode'


def _stage() -> pb.ModelConfig:
    cfg = pbtxt.new("stage_x", "python", 8)
    pbtxt.set_decoupled(cfg, True)
    pbtxt.add_contract(cfg, STAGE_STREAM)
    pbtxt.set_instances(cfg, 3)
    pbtxt.set_parameters(cfg, {"checkpoint_dir": "../../models/x", "odd": ODD})
    return cfg


def test_a_built_config_round_trips_through_its_text(tmp_path: Path) -> None:
    cfg = _stage()
    text = pbtxt.dumps(cfg, header="made by a test\n# second line")
    assert text.startswith("# made by a test\n# second line\nname: \"stage_x\"\n")
    # Triton's schema, read by protobuf itself (not by the module under test)
    again = text_format.Parse(text, pb.ModelConfig())
    assert again == cfg
    assert pbtxt.load(pbtxt.save(tmp_path / "m" / "config.pbtxt", cfg)) == cfg
    assert [t.name for t in again.input] == [t.name for t in STAGE_STREAM.inputs]
    assert [t.name for t in again.output] == [t.name for t in STAGE_STREAM.outputs]
    ids = again.input[0]
    assert (ids.name, pb.DataType.Name(ids.data_type), list(ids.dims)) == ("input_ids", "TYPE_INT32", [-1])
    assert [t.optional for t in again.input] == [t.optional for t in STAGE_STREAM.inputs]
    assert again.model_transaction_policy.decoupled
    assert [(g.count, pb.ModelInstanceGroup.Kind.Name(g.kind)) for g in again.instance_group] == [(3, "KIND_CPU")]


def test_a_parameter_with_quotes_backslashes_and_newlines_survives(tmp_path: Path) -> None:
    text = pbtxt.dumps(_stage())
    assert text_format.Parse(text, pb.ModelConfig()).parameters["odd"].string_value == ODD
    path = pbtxt.save(tmp_path / "config.pbtxt", _stage())
    pbtxt.edit(path, parameters={"odd": ODD + '"}\n parameters { key: "x" }'})
    cfg = pbtxt.load(path)
    assert pbtxt.parameter(cfg, "odd") == ODD + '"}\n parameters { key: "x" }'
    assert sorted(cfg.parameters) == ["checkpoint_dir", "odd"]        # no parameter smuggled in


def test_an_edit_changes_only_the_field_it_names(tmp_path: Path) -> None:
    path = tmp_path / "cascade" / "config.pbtxt"
    path.parent.mkdir()
    shutil.copyfile(CASCADE_CONFIG, path)
    before = text_format.Parse(CASCADE_CONFIG.read_text(), pb.ModelConfig())
    assert before.parameters["cascade_spec"].string_value == "../../cascade.toml"
    pbtxt.edit(path, parameters={"cascade_spec": "elsewhere.toml"}, require=["cascade_spec"])
    after = text_format.Parse(path.read_text(), pb.ModelConfig())
    assert after.parameters["cascade_spec"].string_value == "elsewhere.toml"
    after.parameters["cascade_spec"].string_value = "../../cascade.toml"
    assert after == before                                            # nothing else moved
    # the file's own description stays on top
    assert path.read_text().startswith(CASCADE_CONFIG.read_text().split("\nname:")[0])

    pbtxt.edit(path, name="cascade_b", parameters={"predictor_engine": "numpy", "new_key": "v"})
    renamed = pbtxt.load(path)
    assert renamed.name == "cascade_b" and len(renamed.input) == len(before.input)
    assert pbtxt.parameters(renamed) == {**pbtxt.parameters(before), "cascade_spec": "elsewhere.toml",
                                         "predictor_engine": "numpy", "new_key": "v"}


def test_an_edit_needing_a_missing_parameter_names_it_and_writes_nothing(tmp_path: Path) -> None:
    path = pbtxt.save(tmp_path / "config.pbtxt", _stage())
    text = path.read_text()
    named = r"no 'cascade_spec' parameter to set \(parameters: checkpoint_dir, odd\)"
    with pytest.raises(pbtxt.ConfigError, match=named):
        pbtxt.edit(path, parameters={"cascade_spec": "x.toml"}, require=["cascade_spec"])
    assert path.read_text() == text


def test_a_config_that_is_not_triton_s_schema_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nmax_batch_sise: 8\n')
    with pytest.raises(pbtxt.ConfigError, match=r"config\.pbtxt: not a Triton model config: .*max_batch_sise"):
        pbtxt.load(path)
    with pytest.raises(TypeError, match="parameter flag: string value expected, got True"):
        pbtxt.set_parameter(pbtxt.new("m", "python", 1), "flag", True)  # type: ignore[arg-type]


def test_tensorrt_llm_inputs_are_reshaped_and_ragged_as_its_own_template() -> None:
    cfg = pbtxt.new("s", "tensorrtllm", 64)
    pbtxt.add_contract(cfg, STAGE, trtllm=True)
    by = {t.name: t for t in cfg.input}
    assert by["input_lengths"].HasField("reshape") and list(by["input_lengths"].reshape.shape) == []
    assert by["input_ids"].allow_ragged_batch and not by["input_ids"].HasField("reshape")
    assert not by["stop_words_list"].HasField("reshape") and by["stop_words_list"].allow_ragged_batch
    assert not any(t.HasField("reshape") or t.allow_ragged_batch for t in pbtxt.new("s", "python", 1).input)
    plain = pbtxt.new("s", "python", 8)
    pbtxt.add_contract(plain, STAGE)
    assert not any(t.HasField("reshape") or t.allow_ragged_batch for t in plain.input)
    assert pbtxt.tensor_names(plain) == {t.name for t in (*STAGE.inputs, *STAGE.outputs)}
    assert not pbtxt.is_decoupled(plain) and not plain.HasField("model_transaction_policy")
