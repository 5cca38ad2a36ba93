"""A decoder trained on the codes the GPT writes: does it decode the GPT's samples better?

    python studies/decoder_on_gpt_grids.py [--params params.yaml] [--fraction F]

Run from the project root after a whole run (`dvc exp run` or `dvc repro`). It reads the train stage's GPT,
the decoder stage's inputs and decoder, the sample stage's samples.h5 and the reference stage's statistics.
For every train image the GPT writes each cell given the image's true cells before it (teacher forcing, with
the sample section's temperature, top-k, top-p and guidance: `sampling.teacher_forced_tokens`). A seeded
fraction F of the cells takes the GPT's code instead of the true one, and a decoder is trained on these grids
against the true images with the decoder stage's params, loop and seed (`decoder_training.train_decoder`).
It is `decoder.token_noise` with the GPT's own mistakes (plausible codes) in place of random codes.

Printed: how often the GPT's teacher-forced pick is the true code; both decoders' val PSNR on the true val
codes (the decoder stage's metric); the sample stage's token grids decoded by both and scored as the evaluate
stage scores them (`pipeline.gpt.evaluate.score_token_grids`: Inception FID/KID, class agreement). The same samples, two
decoders: the difference is the decoder's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import read_model_config
from pipeline.core.runtime import resolve_device, resolve_precision
from pipeline.data import cifar10
from pipeline.evaluation.distribution import SampleScorer, score_summary
from pipeline.evaluation.reconstruction import pixel_metrics
from pipeline.gpt import sampling
from pipeline.gpt.evaluate import score_token_grids
from pipeline.gpt.model import load_gpt
from pipeline.params import DEFAULT_PARAMS, load_params
from pipeline.paths import CODEBOOK, DECODER_DIR, FEATURES, GPT_DIR, RAW, REFERENCE, SAMPLES, TOKENS
from pipeline.tokenizer import decoder_training as dt
from pipeline.tokenizer import files as token_files
from pipeline.tokenizer.decoding import TokenDecoder, load_token_decoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    ap.add_argument("--fraction", type=float, default=0.1, help="share of training cells given the GPT's code")
    args = ap.parse_args()
    if not 0 < args.fraction <= 1:
        sys.exit(f"--fraction must lie in (0, 1], got {args.fraction}")
    params = load_params(args.params)
    p = params.decoder.model_copy(update={"token_noise": 0.0})  # the GPT's codes replace the random ones
    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device, "decoder.precision")
    inputs = dt.load_inputs(TOKENS, CODEBOOK, FEATURES, RAW)
    gpt = load_gpt(GPT_DIR, device)
    meta = token_files.read_meta(TOKENS)
    token_files.check_compatible(gpt.cfg, meta, str(GPT_DIR), str(TOKENS))
    token_files.check_same_codebook(
        {str(GPT_DIR): read_model_config(GPT_DIR, "train").get("codebook_sha256")}, str(TOKENS), meta
    )

    truth = inputs.train_tokens
    labels = cifar10.read_split(RAW, "train").labels  # aligned with the tokens: load_inputs checked
    written = sampling.teacher_forced_tokens(gpt, truth, labels, params.sample)
    take = np.random.default_rng(p.seed).random(truth.shape) < args.fraction
    grids = np.where(take, written, truth).astype(np.uint16)
    print(
        f"teacher-forced GPT picks the true code for {100 * np.mean(written == truth):.1f} % of the "
        f"{truth.size:,} train cells; the decoder's grids: {100 * args.fraction:g} % of the cells from the GPT, "
        f"{100 * np.mean(grids != truth):.1f} % differ from the true codes",
        flush=True,
    )

    feature_loss = dt.build_feature_loss(inputs, device) if p.perceptual_weight > 0 else None
    with tempfile.TemporaryDirectory() as checkpoints:
        result = dt.train_decoder(
            p,
            replace(inputs, train_tokens=grids),
            Path(checkpoints),
            device,
            precision,
            "decoder_on_gpt_grids",
            feature_loss,
            realism=dt.curve_realism(p, REFERENCE, device),  # selected as the stage selects
        )
    decoders = {
        "decoder stage": load_token_decoder(DECODER_DIR),
        f"trained with {100 * args.fraction:g} % GPT codes": TokenDecoder(
            "cnn", inputs.grid, len(inputs.centroids), model=result.model
        ),
    }
    scorer = SampleScorer.load(params.evaluate, RAW, REFERENCE)
    tokens, sample_labels = sampling.read_token_grids(SAMPLES)
    for name, decoder in decoders.items():
        val = pixel_metrics(inputs.val_images, decoder.decode(inputs.val_tokens, p.batch_size, device))
        print(
            f"{name}: val PSNR {val['psnr_db']:.2f} dB, SSIM {val['ssim']:.3f}; {SAMPLES}: "
            f"{score_summary(score_token_grids(scorer, decoder, tokens, sample_labels))}",
            flush=True,
        )


if __name__ == "__main__":
    main()
