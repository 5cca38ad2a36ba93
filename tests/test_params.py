from pathlib import Path

import pytest
import yaml

from conftest import REPO, run
from pipeline.params import (
    CPU_PRESET, ParamsError, apply_overrides, cpu_preset_differences, load_params, parse_params,
)


def test_repo_params_are_valid():
    p = load_params(REPO / "params.yaml")
    assert p.train.n_embd % p.train.n_head == 0
    assert p.download.expect_train == 50_000 and p.codebook.k == 512


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
    ],
)
def test_bad_value_names_key_value_and_allowed(repo_params, section, key, value, words):
    repo_params[section][key] = value
    with pytest.raises(ParamsError) as err:
        parse_params(repo_params)
    for word in words:
        assert word in str(err.value)


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
    assert (p.train.n_layer, p.train.epochs, p.train.precision, p.decoder.channels) == (4, 15, "auto", 64)
    assert raw["train"]["n_layer"] == 8  # the mapping passed in is left alone
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
