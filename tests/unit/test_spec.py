from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from optistop.spec import DEFAULT_SPEC, SpecError, load_spec

SPEC = DEFAULT_SPEC.read_text()


def test_default_spec_loads() -> None:
    spec = load_spec()
    assert spec.costs == (1.0, 4.5, 10.0)
    assert spec.stage_names == ("small", "medium", "large")
    assert spec.stage_index("medium") == 1
    assert all(s.checkpoint.is_dir() for s in spec.stages)


def _write(tmp_path: Path, text: str) -> Path:
    # keep relative checkpoint paths resolvable by writing next to the real spec's directory layout
    (tmp_path / "models").symlink_to(DEFAULT_SPEC.parent / "models")
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_missing_checkpoint_names_the_field(tmp_path: Path) -> None:
    path = _write(tmp_path, SPEC.replace('"models/tiny/medium"', '"models/tiny/nope"'))
    with pytest.raises(SpecError, match=r"^spec.toml: stages\[1\].checkpoint: 'models/tiny/nope' does not exist"):
        load_spec(path)


def test_costs_must_strictly_increase(tmp_path: Path) -> None:
    path = _write(tmp_path, SPEC.replace("cost = 10.0", "cost = 4.5"))
    with pytest.raises(SpecError, match=r"stages\[2\].cost: costs must strictly increase"):
        load_spec(path)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('name = "small"\n', "", r"stages\[0\].name: missing"),
        ("cost = 1.0", "cost = -1.0", r"stages\[0\].cost: must be a finite number > 0"),
        ("max_tokens_cap = 32", "max_tokens_cap = 32\ndefault_lambda = -2.0", "cascade.default_lambda"),
        ("max_tokens_default = 16", "max_tokens_default = 64", "cascade.max_tokens_default"),
        ('triton_model = "stage_medium"', 'triton_model = "stage_small"', r"stages\[\].triton_model"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, old: str, new: str, field: str) -> None:
    assert old in SPEC
    path = _write(tmp_path, SPEC.replace(old, new, 1))
    with pytest.raises(SpecError, match=field):
        load_spec(path)


def test_cli_prints_one_error_line(tmp_path: Path) -> None:
    path = _write(tmp_path, SPEC.replace("cost = 10.0", "cost = 2.0"))
    proc = subprocess.run([sys.executable, "-m", "optistop.spec", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "stages[2].cost" in lines[0]


def test_stage_timeouts_scale_with_max_tokens_on_the_gpu_profile() -> None:
    """A 1,024-token answer of the 72B at TP 4 under load is not done in a flat 30 s: the timeout of a
    call grows with the tokens it asks for, and the largest stage gets the most time per token."""
    spec = load_spec(DEFAULT_SPEC.parent / "build" / "qwen2.5-trtllm.toml", check_paths=False)
    cap = spec.max_tokens_cap
    per_token = [s.timeout_per_token_s for s in spec.stages]
    assert all(p > 0 for p in per_token) and per_token == sorted(per_token)
    for s in spec.stages:
        assert s.timeout_for(cap) == pytest.approx(s.timeout_s + cap * s.timeout_per_token_s)
        assert s.timeout_for(cap) >= cap / 20        # room for 20 tokens/s at the longest answer
        assert s.timeout_for(1) < s.timeout_for(cap) / 2
    assert load_spec().stages[0].timeout_for(32) == 30.0  # the embedded cascade keeps its flat default


def test_stop_token_ids_are_checked(tmp_path: Path) -> None:
    text = DEFAULT_SPEC.read_text().replace('[cascade]\n', '[cascade]\nstop_token_ids = [3, -1]\n', 1)
    bad = tmp_path / "c.toml"
    bad.write_text(text)
    with pytest.raises(SpecError, match=r"cascade.stop_token_ids: must be a list of token ids"):
        load_spec(bad, check_paths=False)
    qwen = load_spec(DEFAULT_SPEC.parent / "build" / "qwen2.5-trtllm.toml", check_paths=False)
    assert qwen.stop_token_ids == (151643,)   # <|endoftext|>; <|im_end|> is the tokenizer's eos


def test_remote_stage_url_is_checked_and_its_weights_need_not_be_here(tmp_path: Path) -> None:
    text = SPEC.replace('checkpoint = "models/tiny/large"', 'checkpoint = "models/tiny/elsewhere"\n'
                        'url = "stage-large.optistop.svc:8001"')
    spec = load_spec(_write(tmp_path, text.replace('predictor_model = "quality_predictor"',
                                                   'predictor_model = "quality_predictor"\n'
                                                   'predictor_url = "127.0.0.1:8101"')))
    assert [s.url for s in spec.stages] == ["", "", "stage-large.optistop.svc:8001"]
    assert spec.predictor_url == "127.0.0.1:8101" and spec.remote
    assert not load_spec().remote


@pytest.mark.parametrize("url", ["http://stage-large:8001", "stage-large", "stage large:8001", "host:80a"])
def test_bad_url_names_the_field(tmp_path: Path, url: str) -> None:
    text = SPEC.replace('triton_model = "stage_large"\n', f'triton_model = "stage_large"\nurl = "{url}"\n')
    with pytest.raises(SpecError, match=r"stages\[2\]\.url: expected host:port"):
        load_spec(_write(tmp_path, text))


def test_max_temperature_is_checked(tmp_path: Path) -> None:
    for bad in ("-0.1", "2.5", '"hot"'):
        text = DEFAULT_SPEC.read_text().replace('[cascade]\n', f'[cascade]\nmax_temperature = {bad}\n', 1)
        path = tmp_path / "spec.toml"
        path.write_text(text)
        with pytest.raises(SpecError, match=r"cascade.max_temperature"):
            load_spec(path, check_paths=False)


@pytest.mark.parametrize(("old", "new", "where"), [
    ('triton_model = "stage_large"\n', 'triton_model = "stage_large"\ntimout_s = 0.5\n', r"stages\[2\]\.timout_s"),
    ("max_tokens_cap = 32", "max_tokens_cap = 32\nmax_token_cap = 8", r"cascade\.max_token_cap"),
    ("[cascade]", "[cascde]\nname = 'x'\n\n[cascade]", r"cascde: unknown table"),
])
def test_unknown_keys_are_refused_naming_the_valid_ones(tmp_path: Path, old: str, new: str, where: str) -> None:
    """A typo would otherwise load and keep the default (a 30 s timeout where 0.5 s was meant)."""
    assert old in SPEC
    with pytest.raises(SpecError, match=where) as info:
        load_spec(_write(tmp_path, SPEC.replace(old, new, 1)))
    msg = str(info.value)
    assert "\n" not in msg
    if "stages" in where:
        assert "unknown key; known keys are name, triton_model, checkpoint, cost" in msg and "timeout_s" in msg
    elif "cascade" in where:
        assert "max_tokens_cap" in msg and "predictor_timeout_s" in msg and "source" not in msg
    else:
        assert "known tables are cascade, stages, supervisor, trtllm, llmapi" in msg


def test_every_field_is_a_key_the_loader_reads(tmp_path: Path) -> None:
    """Keys are the dataclass fields: every field of the default spec, written out, loads back equal."""
    from optistop.render.repo import spec_toml

    spec = load_spec()
    path = tmp_path / "resolved.toml"
    path.write_text(spec_toml(spec))
    assert load_spec(path) == spec


def test_predictor_timeout(tmp_path: Path) -> None:
    assert load_spec().predictor_timeout_s == 5.0
    spec = load_spec(_write(tmp_path, SPEC.replace("[cascade]\n", "[cascade]\npredictor_timeout_s = 0.25\n")))
    assert spec.predictor_timeout_s == 0.25
    for bad in ("0", "-1", "nan", '"1"'):
        path = tmp_path / f"bad{len(bad)}.toml"
        path.write_text(SPEC.replace("[cascade]\n", f"[cascade]\npredictor_timeout_s = {bad}\n"))
        with pytest.raises(SpecError, match="cascade.predictor_timeout_s"):
            load_spec(path, check_paths=False)


def test_toml_without_tomllib(tmp_path: Path) -> None:
    """Python 3.10 has no tomllib: every loader of TOML files falls back to tomli (pinned for < 3.11).
    Run with tomllib unimportable, in a fresh interpreter."""
    code = (
        "import sys; sys.modules['tomllib'] = None\n"
        "from optistop.spec import load_spec\n"
        "from optistop.render import llmapi as render_llmapi, repo as render\n"
        "from optistop.compat import tomllib\n"
        "assert tomllib.__name__ == 'tomli', tomllib\n"
        "spec = load_spec()\n"
        "trt = render.load_trtllm_settings(render.REPO_ROOT / 'build' / 'qwen2.5-trtllm.toml')\n"
        "llm = render.REPO_ROOT / 'build' / 'qwen2.5-llmapi.toml'\n"
        "render_llmapi.load_llmapi_settings(llm, load_spec(llm, check_paths=False))\n"
        "print(spec.name, len(spec.stages), len(trt.stages))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tiny", "3", "3"]
