"""bench/ scripts that measure the tokenizer run on the tiny pipeline's real artifacts and say what they measured."""

from __future__ import annotations

import re
import sys

from conftest import copy_run, run


def test_residual_codes_lower_the_error_and_feed_the_decoder(tiny_pipeline, tmp_path, torch_home):
    repo = copy_run(tiny_pipeline[0], tmp_path / "repo")
    out = run([sys.executable, "bench/bench_tokenizer_ceiling.py", "--residual-k", "8"], cwd=repo).stdout
    one, two = map(float, re.search(r"one code \(K = \d+\) ([\d.]+), two codes \(\+ K = 8 on the residual\) ([\d.]+)", out).groups())
    assert 0 < two < one < 1  # a second code per cell quantises each cell's error again
    assert re.search(r"val PSNR from two codes per cell \(K = \d+ \+ 8\): [\d.]+ dB, SSIM [\d.]+", out)
