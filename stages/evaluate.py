"""evaluate: GPT test NLL and sample quality -> metrics/eval.json, plots/eval_classes.csv.

Samples (evaluate.n_samples of data/samples) are scored in Inception features against the train
statistics of the reference stage (FID, KID) next to the floor, as many reference test images scored
the same way; the independent evaluator (evaluate.evaluator) gives class agreement and a fast proxy
distance in its own features (pipeline/evaluation/distribution.py). The tokenizer is scored by the
reconstruct stage.
"""

import logging
import math
import time
from pathlib import Path

from stages import PARAMS_OPTION, app
from pipeline.paths import DECODER_DIR, GPT_DIR, METRICS, PLOTS, RAW, REFERENCE, SAMPLES, TOKENS

log = logging.getLogger(__name__)

METRICS_JSON = METRICS / "eval.json"
CLASSES_CSV = PLOTS / "eval_classes.csv"


@app.command()
def evaluate(params: Path = PARAMS_OPTION) -> None:
    """Score the GPT (test NLL) and the samples (Inception FID/KID vs the floor, class agreement)."""
    from pipeline.core.artifacts import read_model_config
    from pipeline.core.atomic import write_json
    from pipeline.core.errors import PipelineError
    from pipeline.core.plots import write_csv
    from pipeline.core.runtime import resolve_device
    from pipeline.data import cifar10
    from pipeline.evaluation.classifier import evaluator_label, load_evaluator
    from pipeline.evaluation.distribution import sample_quality
    from pipeline.evaluation.reference import description, read_reference
    from pipeline.gpt import likelihood, sampling
    from pipeline.gpt.model import load_gpt
    from pipeline.params import load_params
    from pipeline.tokenizer import files as tok

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
    gpt = likelihood.saved_model_metrics(model, gpt_config, test, "test", p.batch_size, device)
    gpt.update(likelihood.unigram_baselines(train.tokens, test.tokens, meta.k))
    del model

    raw_train, raw_test = cifar10.read_split(RAW, "train"), cifar10.read_split(RAW, "test")
    ref = read_reference(REFERENCE)
    samples = sampling.read_samples(SAMPLES)
    if samples.tokens.shape[1] != meta.seq_len:
        raise PipelineError(f"{SAMPLES}: {samples.tokens.shape[1]} tokens per image vs {meta.seq_len} in {TOKENS}; re-run the sample stage")
    quality, per_class = sample_quality(
        samples.images, samples.labels if samples.conditional else None, raw_test.images, raw_train.images, ref,
        evaluator=load_evaluator(p.evaluator), evaluator_name=p.evaluator, n=p.n_samples, batch_size=p.batch_size,
        kid_subset_size=p.kid_subset_size, device=device, seed=p.seed,
    )  # fmt: skip
    metrics = {
        "gpt": gpt, **quality, "inception": description(ref, p.n_samples, "train"), "evaluator": p.evaluator,
        "conditional": samples.conditional, "device": str(device),
    }  # fmt: skip
    write_json(METRICS_JSON, metrics)
    names = samples.classes or cifar10.CLASSES
    write_csv(
        CLASSES_CSV, ("class", "share_of_samples", "agreement"),
        [(names[r["class"]], f"{r['share']:.4f}", "" if "agreement" not in r or math.isnan(r["agreement"]) else f"{r['agreement']:.4f}")
         for r in per_class],
    )  # fmt: skip
    s, floor, label = quality["samples"], quality["floor_test_images"], evaluator_label(p.evaluator)
    log.info(
        "GPT test %.4f nats/token (%.1f bits/image; unigram %.1f); %d samples: Inception FID %.2f (floor %.2f), "
        "KID %.4f, precision %.3f, recall %.3f, fid_%s %.2f, class agreement %s -> %s (%.0f s)",
        gpt["test_nll"], gpt["test_bits_per_image"], gpt["unigram_test_entropy_bits_per_image"], s["n"],
        s["fid_inception"], floor["fid_inception"], s["kid_inception_mean"], s["precision_inception"],
        s["recall_inception"], label, s[f"fid_{label}"],
        "n/a" if s["class_agreement"] is None else f"{100 * s['class_agreement']:.1f} %", METRICS_JSON,
        time.perf_counter() - t0,
    )  # fmt: skip
