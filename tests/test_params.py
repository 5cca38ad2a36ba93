import copy
import functools
import re
import shlex
from pathlib import Path
from typing import get_args, get_type_hints

import pytest
import yaml
from conftest import REPO, run

from pipeline.gpt.attention_masks import ATTENTIONS
from pipeline.gpt.model import GPTConfig
from pipeline.params import (
    CPU_PRESET,
    ParamsError,
    TrainParams,
    apply_overrides,
    apply_words,
    cpu_preset_differences,
    load_params,
    parse_params,
    preset_overrides,
)


def cpu_preset_raw() -> dict:
    """params.yaml with the CPU preset's overrides, as `dvc exp run $(grep -v '^#' presets/cpu.args)` writes it."""
    return apply_overrides(yaml.safe_load((REPO / "params.yaml").read_text()), REPO / CPU_PRESET)


def test_repo_params_are_valid():
    p = load_params(REPO / "params.yaml")
    assert p.train.n_embd % p.train.n_head == 0
    assert p.download.expect_train == 50_000
    for codebook in (p.codebook, parse_params(cpu_preset_raw()).codebook):
        assert codebook.sample_size >= 128 * codebook.k  # k-means sees at least 128 cells per code (the default's)


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("train", "n_head", 7, ["train", "divisible by n_head (7)"]),
        ("train", "lr", -1.0, ["train.lr", "-1.0", "greater than 0"]),
        ("codebook", "k", 70_000, ["codebook.k", "70000", "less than or equal to 65535"]),
        ("extract", "precision", "fp8", ["extract.precision", "'fp8'", "'auto', 'fp32', 'bf16' or 'fp16'"]),
        ("decoder", "epochs", "ten", ["decoder.epochs", "'ten'", "integer"]),
        ("train", "n_layers", 4, ["train.n_layers", "unknown key"]),
        ("sample", "top_p", 1.5, ["sample.top_p", "1.5"]),
        ("train", "n_kv_head", 4, ["train", "n_head (6) must be divisible by n_kv_head (4)", "[1, 2, 3, 6] or null"]),
        ("train", "window", 0, ["train.window", "0", "greater than or equal to 1"]),
        ("train", "attention", "sparse", ["train.attention", "'sparse'", "'full', 'local', 'axial' or 'strided'"]),
        ("train", "pos_emb", "3d", ["train.pos_emb", "'3d'", "'1d', '2d', 'rope2d' or 'none'"]),
    ],
)
def test_bad_value_names_key_value_and_allowed(repo_params, section, key, value, words):
    repo_params[section][key] = value
    with pytest.raises(ParamsError) as err:
        parse_params(repo_params)
    for word in words:
        assert word in str(err.value)


def test_rotary_positions_need_head_widths_divisible_by_4(repo_params):
    repo_params["train"].update(pos_emb="rope2d", n_embd=24, n_head=4)  # heads of 6 dims
    with pytest.raises(ParamsError) as err:
        parse_params(repo_params)
    assert "pos_emb rope2d needs a head width n_embd / n_head (6) divisible by 4" in str(err.value)
    assert "e.g. n_head in [1, 2, 3, 6]" in str(err.value)
    repo_params["train"]["n_head"] = 2
    assert parse_params(repo_params).train.pos_emb == "rope2d"


def test_train_choices_are_the_models():
    train = TrainParams.model_fields
    for key in ("attention", "pos_emb"):
        assert get_args(train[key].annotation) == get_args(get_type_hints(GPTConfig)[key]), key
    assert get_args(train["attention"].annotation) == ATTENTIONS


def test_evaluator_must_not_be_the_tokenizers_network(repo_params):
    repo_params["extract"]["encoder"] = repo_params["evaluate"]["evaluator"] = "cifar_resnet20"
    with pytest.raises(ParamsError) as err:
        parse_params(repo_params)
    message = str(err.value)
    assert "evaluate.evaluator = 'cifar_resnet20'" in message and "extract.encoder" in message
    assert "perceptual loss" in message and "cifar_resnet56" in message and "{" not in message
    repo_params["extract"]["encoder"] = "pixels"  # a tokenizer without a CNN: any classifier is independent
    assert parse_params(repo_params).evaluate.evaluator == "cifar_resnet20"


def test_missing_key_and_section_are_named(repo_params):
    del repo_params["codebook"]["niter"]
    del repo_params["evaluate"]
    with pytest.raises(ParamsError) as err:
        parse_params(repo_params)
    assert "codebook.niter: missing" in str(err.value)
    assert "evaluate: missing" in str(err.value)


def test_unreadable_params_file(tmp_path: Path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_cli_reports_bad_params_without_traceback(tmp_path: Path, repo_params):
    repo_params["download"]["expect_test"] = 0
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(repo_params))
    proc = run(["python", "-m", "stages", "download", "--params", str(params)], cwd=REPO, check=False)
    assert proc.returncode == 2
    assert "download.expect_test = 0" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_lists_every_registered_stage():
    out = run(["python", "-m", "stages", "--help"], cwd=REPO).stdout
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert len(stages) == 9 and all(f"python -m stages {name}" == s["cmd"] for name, s in stages.items())
    assert all(name in out for name in stages)


def test_cpu_preset_applies_like_dvc_exp_run(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    p = parse_params(apply_overrides(raw, REPO / CPU_PRESET))  # valid params
    overrides = preset_overrides(REPO / CPU_PRESET)
    assert overrides["train"]["n_layer"] != raw["train"]["n_layer"]  # the preset does change the GPT
    for section, values in overrides.items():
        assert getattr(p, section).model_dump(include=set(values)) == values
    assert raw == yaml.safe_load((REPO / "params.yaml").read_text())  # the mapping passed in is left alone
    bad = tmp_path / "bad.args"
    for text in ("-S train.n_layer", "-S nosuch.key=1", "--set train.lr=1", "-S train.lr=1 -S"):
        bad.write_text(text + "\n")
        with pytest.raises(ParamsError, match="bad.args"):
            apply_overrides(raw, bad)


def test_cpu_preset_differences_name_the_keys_that_leave_the_preset():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    preset = parse_params(apply_overrides(raw, REPO / CPU_PRESET))
    assert cpu_preset_differences("decoder", preset.decoder) == []
    assert cpu_preset_differences("train", preset.train) == []
    assert cpu_preset_differences("train", preset.train.model_copy(update={"epochs": 3})) == ["train.epochs"]
    assert "decoder.channels" in cpu_preset_differences("decoder", parse_params(raw).decoder)


def test_docs_attention_study_runs_are_valid_params(tmp_path):
    """Each run of the attention study (docs/attention_study.md: the CPU preset, then `P`, then one variant's
    overrides: what `dvc exp run --queue $P -S $v` writes to params.yaml) passes validation, and `P` sets the
    study's size."""
    text = (REPO / "docs" / "attention_study.md").read_text()
    study = text[text.index('P="$(grep') : text.index("dvc queue start")]
    p_words = shlex.split(study[study.index("-S") : study.index('"\n')].replace("\\\n", " "))
    variants = re.findall(r'"(train\.[^"]+)"', study) + ["train.seed=1", "train.attention=axial -S train.seed=1"]
    assert len(variants) >= 13 and "train.pos_emb=1d" in variants
    raw = cpu_preset_raw()
    for v in variants:
        args = tmp_path / "run.args"
        args.write_text(shlex.join(p_words + ["-S", *v.split()]))
        p = parse_params(apply_overrides(raw, args))
        for override in v.split(" -S "):  # the variant's own values won over P's
            key, value = override.split("=")
            assert getattr(p.train, key.removeprefix("train.")) == yaml.safe_load(value), v
        if "n_layer" not in v:
            assert (p.train.n_layer, p.train.n_embd, p.train.epochs, p.evaluate.n_samples) == (4, 128, 15, 1000), v


def test_docs_tokenizer_study_rows_are_valid_params():
    """Each row's overrides in the tokenizer study's levers (docs/tokenizer_study.md, "Toward 24 dB" to the end), on
    top of the CPU preset (what `dvc exp run reconstruct $(grep -v '^#' presets/cpu.args) <overrides>` writes to
    params.yaml), are valid params that hold the row's values; `+key` adds a key, as in `dvc exp run -S`."""
    text = (REPO / "docs" / "tokenizer_study.md").read_text()
    study = text[text.index("## Toward 24 dB") :]
    rows = re.findall(r"`(-S [^`]+)`", study)
    assert len(rows) >= 10 and "-S codebook.whiten=true" in rows
    preset = cpu_preset_raw()
    for row in rows:
        words = shlex.split(row)
        assert words[::2] == ["-S"] * (len(words) // 2), row
        overrides = [
            (key.removeprefix("+").split("."), yaml.safe_load(value))
            for key, _, value in (w.partition("=") for w in words[1::2])
        ]
        raw = copy.deepcopy(preset)
        for (*path, name), value in overrides:
            functools.reduce(lambda mapping, key: mapping.setdefault(key, {}), path, raw)[name] = value
        held = parse_params(raw).model_dump()
        assert all(functools.reduce(dict.__getitem__, keys, held) == value for keys, value in overrides), row


def test_overrides_reach_nested_keys_and_take_dvcs_plus_for_new_ones():
    """`-S +codebook.layer_weights.stem=1.5` (DVC adds the key) sets one leaf and keeps the section's others."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    words = ["-S", "+codebook.layer_weights.stem=1.5", "-S", "codebook.k=64"]
    changed = apply_words(raw, words, "study.yaml")
    assert changed["codebook"]["layer_weights"] == {"stem": 1.5} and changed["codebook"]["k"] == 64
    assert changed["codebook"]["niter"] == raw["codebook"]["niter"] and raw["codebook"]["layer_weights"] == {}
    with pytest.raises(ParamsError, match="study.yaml: expected `-S section.key=value`"):
        apply_words(raw, ["-S", "nosuchsection.k=1"], "study.yaml")
