"""The reconstruct stage's work: how well the tokenizer (codebook + decoder) keeps the test images.

`score_tokenizer` decodes the tokens of the reference's test images (the reference stage's file; the
first reconstruct.n_images of them) with the trained decoder and scores the reconstructions against the
originals: PSNR and SSIM on [0, 1], the independent evaluator's accuracy (evaluate.evaluator), and rFID,
the Inception FID of the reconstructions against the statistics of the reference test images (published
rFIDs: all test images). No GPT is involved.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.core.results import Results, minutes
from pipeline.core.runtime import resolve_device
from pipeline.data import cifar10
from pipeline.evaluation import inception
from pipeline.evaluation.classifier import classifier_accuracy, load_evaluator
from pipeline.evaluation.reconstruction import pixel_metrics
from pipeline.evaluation.reference import description, fid_to, read_reference
from pipeline.params import ReconstructParams
from pipeline.tokenizer import files as tok
from pipeline.tokenizer.decoding import load_token_decoder


def score_tokenizer(
    p: ReconstructParams, evaluator: str, tokens: Path, raw: Path, reference: Path, decoder_dir: Path
) -> Results:
    """The reconstruct stage: the test tokens of `tokens` (aligned with the raw file's test images) decoded by
    the decoder in `decoder_dir` and scored against the originals, on the reference's test images (`reference`)
    with the classifier `evaluator`; returns the stage's results."""
    device = resolve_device(p.device)
    t0 = time.perf_counter()
    meta = tok.read_meta(tokens)
    test, raw_test = tok.read_split(tokens, "test", meta), cifar10.read_split(raw, "test")
    tok.check_aligned(test, raw_test.images, raw_test.labels, tokens, raw, "test")
    ref = read_reference(reference)
    idx = ref.test_indices[: p.n_images]
    originals, labels = raw_test.images[idx], raw_test.labels[idx]
    decoder = load_token_decoder(decoder_dir)
    reconstructions = decoder.decode(test.tokens[idx].numpy(), p.batch_size, device)
    metrics = {f"test_{k}": v for k, v in pixel_metrics(originals, reconstructions).items()}
    evaluator_net, inception_net = load_evaluator(evaluator), inception.load_inception()
    metrics |= classifier_accuracy(evaluator_net, originals, reconstructions, labels, p.batch_size, device)
    features = inception.inception_features(inception_net, reconstructions, p.batch_size, device, ref.precision)
    metrics |= {"rfid": fid_to(features, ref.test), "reconstruct_minutes": minutes(time.perf_counter() - t0)}
    info = {
        "n_images": len(idx),
        "evaluator": evaluator,
        "tokens_per_image": int(test.tokens.shape[1]),
        "kind": decoder.kind,
        "inception": description(ref, len(idx), "test"),
        "device": str(device),
    }
    return Results(metrics, info)
