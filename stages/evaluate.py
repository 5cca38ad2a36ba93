"""evaluate: GPT test NLL, tokenizer reconstructions and sample quality -> metrics/eval.json, plots/eval_classes.csv.

Sample distances (Fréchet distance, KID) live in the evaluator's (evaluation/classifier.py) pooled feature space
and compare evaluate.n_samples images of data/samples with the 10,000 test images; the same number of
test reconstructions and of train images are scored the same way as reference points (the train
images give the floor a perfect generator would reach with that many images).
"""

import logging
import math
import time
from pathlib import Path

from stages import PARAMS_OPTION, app
from stages.paths import DECODER_DIR, GPT_DIR, METRICS, PLOTS, RAW, SAMPLES, TOKENS

log = logging.getLogger(__name__)

METRICS_JSON = METRICS / "eval.json"
CLASSES_CSV = PLOTS / "eval_classes.csv"


@app.command()
def evaluate(params: Path = PARAMS_OPTION) -> None:
    """Score the GPT (test NLL), the tokenizer (reconstructions) and the samples (FID/KID, class agreement)."""
    from pipeline.core.artifacts import read_model_config
    from pipeline.core.atomic import write_json
    from pipeline.core.errors import PipelineError
    from pipeline.core.plots import write_csv
    from pipeline.core.runtime import resolve_device, resolve_precision
    from pipeline.data import cifar10
    from pipeline.evaluation.classifier import EVALUATOR_NAME
    from pipeline.evaluation.distribution import sample_quality
    from pipeline.evaluation.reconstruction import reconstruction_metrics
    from pipeline.gpt import likelihood, sampling
    from pipeline.gpt.model import load_gpt
    from pipeline.params import load_params
    from pipeline.tokenizer import files as tok
    from pipeline.tokenizer.decoding import load_token_decoder

    p = load_params(params).evaluate
    device = resolve_device(p.device)
    t0 = time.perf_counter()
    meta = tok.read_meta(TOKENS)
    train, test = tok.read_split(TOKENS, "train", meta), tok.read_split(TOKENS, "test", meta)
    model = load_gpt(GPT_DIR, device)
    tok.check_compatible(model.cfg, meta, str(GPT_DIR), str(TOKENS))
    gpt_config, decoder_config = read_model_config(GPT_DIR, "train"), read_model_config(DECODER_DIR, "decoder")
    tok.check_same_codebook({
        str(GPT_DIR): gpt_config.get("codebook_sha256"), str(DECODER_DIR): decoder_config.get("codebook_sha256"),
    }, str(TOKENS), meta)  # fmt: skip
    # the train section's precision resolved here, as training resolved it for its per-epoch test NLL
    precision = resolve_precision(gpt_config.get("train", {}).get("precision", "fp32"), device, "train.precision")
    nll = likelihood.mean_nll(model, test, p.batch_size, device, precision)
    gpt = {**likelihood.nll_metrics(nll, meta.seq_len, "test"), "precision": precision}
    gpt.update(likelihood.unigram_baselines(train.tokens, test.tokens, meta.k))
    del model

    raw_train, raw_test = cifar10.read_split(RAW, "train"), cifar10.read_split(RAW, "test")
    tok.check_aligned(test, raw_test.images, raw_test.labels, TOKENS, RAW, "test")
    decoder = load_token_decoder(DECODER_DIR)
    reconstructions = decoder.decode(test.tokens.numpy(), p.batch_size, device)
    tokenizer = reconstruction_metrics(raw_test.images, reconstructions, raw_test.labels, p.batch_size, device)

    samples = sampling.read_samples(SAMPLES)
    if samples.tokens.shape[1] != meta.seq_len:
        raise PipelineError(f"{SAMPLES}: {samples.tokens.shape[1]} tokens per image vs {meta.seq_len} in {TOKENS}; re-run the sample stage")
    quality, per_class = sample_quality(
        samples.images, samples.labels if samples.conditional else None, raw_test.images,
        {"reconstructions": reconstructions, "train_images": raw_train.images},
        n=p.n_samples, batch_size=p.batch_size, kid_subset_size=p.kid_subset_size, device=device, seed=p.seed,
    )  # fmt: skip
    metrics = {
        "gpt": gpt, "tokenizer": tokenizer, **quality, "conditional": samples.conditional,
        "n_test": len(raw_test.images), "device": str(device),
    }  # fmt: skip
    write_json(METRICS_JSON, metrics)
    names = samples.classes or cifar10.CLASSES
    write_csv(
        CLASSES_CSV, ("class", "share_of_samples", "agreement"),
        [(names[r["class"]], f"{r['share']:.4f}", "" if "agreement" not in r or math.isnan(r["agreement"]) else f"{r['agreement']:.4f}")
         for r in per_class],
    )  # fmt: skip
    s, rec, tr = quality["samples"], quality["reference_reconstructions"], quality["reference_train_images"]
    log.info(
        "GPT test %.4f nats/token (%.1f bits/image; unigram %.1f); tokenizer PSNR %.2f dB; samples fid_%s %.2f "
        "(reconstructions %.2f, train images %.2f), class agreement %s -> %s (%.0f s)",
        gpt["test_nll"], gpt["test_bits_per_image"], gpt["unigram_test_entropy_bits_per_image"], tokenizer["psnr_db"],
        EVALUATOR_NAME, *(x[f"fid_{EVALUATOR_NAME}"] for x in (s, rec, tr)),
        "n/a" if s["class_agreement"] is None else f"{100 * s['class_agreement']:.1f} %", METRICS_JSON,
        time.perf_counter() - t0,
    )  # fmt: skip
