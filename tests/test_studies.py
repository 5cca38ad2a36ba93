"""studies/ scripts that measure the tokenizer and score samples, run on the tiny pipeline's real artifacts."""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
from conftest import copy_run, run

from pipeline.evaluation.distribution import sample_results
from pipeline.gpt.sampling import read_token_grids


def test_tokenizer_ceiling_trains_the_decoder_on_the_unquantised_features(tiny_pipeline, tmp_path, torch_home):
    repo = copy_run(tiny_pipeline[0], tmp_path / "repo")
    out = run([sys.executable, "studies/tokenizer_ceiling.py"], cwd=repo).stdout
    psnr, ssim = map(
        float, re.search(r"val PSNR from the features \(no quantisation\): ([\d.]+) dB, SSIM ([\d.]+)", out).groups()
    )
    assert psnr > 0 and 0 < ssim <= 1


def test_decoder_on_gpt_grids_trains_on_the_gpts_codes_and_scores_both_decoders(tiny_pipeline, tmp_path, torch_home):
    repo = copy_run(tiny_pipeline[0], tmp_path / "repo")
    out = run([sys.executable, "studies/decoder_on_gpt_grids.py", "--fraction", "0.5"], cwd=repo).stdout
    same, differ = map(
        float,
        re.search(
            r"picks the true code for ([\d.]+) % .* 50 % of the cells from the GPT, ([\d.]+) % differ", out
        ).groups(),
    )
    assert (
        0 <= same <= 100 and abs(differ - 0.5 * (100 - same)) < 5
    )  # half the cells take the GPT's pick, itself wrong 100 - same %
    scored = re.findall(
        r"^(decoder stage|trained with 50 % GPT codes): val PSNR [\d.]+ dB, SSIM [\d.]+; .*Inception FID ([\d.]+)",
        out,
        re.M,
    )
    assert [name for name, _ in scored] == ["decoder stage", "trained with 50 % GPT codes"]
    assert all(float(fid) > 0 for _, fid in scored)


def test_score_samples_scores_the_sample_stage_output_as_the_evaluate_stage_did(tiny_pipeline, tmp_path, torch_home):
    repo = copy_run(tiny_pipeline[0], tmp_path / "repo")
    run([sys.executable, "studies/score_samples.py", "data/samples/samples.h5", "--out", "scores.json"], cwd=repo)
    scored = sample_results(json.loads((repo / "scores.json").read_text())["samples"])  # named after its folder
    evaluated = json.loads((repo / "metrics" / "eval.json").read_text())
    assert scored.metrics == {key: evaluated[key] for key in scored.metrics}
    assert scored.info.items() <= json.loads((repo / "info" / "eval.json").read_text()).items()


def test_sample_grids_draws_the_sample_stages_grids_without_a_decoder_and_the_evaluate_stages_test_nll(
    tiny_pipeline, tmp_path
):
    repo = copy_run(tiny_pipeline[0], tmp_path / "repo")
    shutil.rmtree(repo / "data" / "models" / "decoder")  # what a lent GPU has: the GPT and the token file
    run([sys.executable, "studies/sample_grids.py", "grids", "--name", "tiny", "--seeds", "0,1"], cwd=repo)
    stage_tokens, stage_labels = read_token_grids(repo / "data" / "samples" / "samples.h5")  # sample.seed 0
    seed0, seed1 = (read_token_grids(repo / "grids" / f"tiny_n{len(stage_labels)}_s{s}.npz") for s in (0, 1))
    np.testing.assert_array_equal(seed0[0], stage_tokens)
    np.testing.assert_array_equal(seed0[1], stage_labels)
    np.testing.assert_array_equal(seed1[1], stage_labels)
    assert not np.array_equal(seed1[0], stage_tokens)
    evaluated = json.loads((repo / "metrics" / "eval.json").read_text())
    nll = json.loads((repo / "grids" / "tiny_test_nll.json").read_text())
    assert nll["test_nll"] == evaluated["test_nll"] and nll["test_bits_per_image"] == evaluated["test_bits_per_image"]
