"""evaluate: GPT test NLL and sample quality -> metrics/eval.json, plots/eval_classes.csv.

Samples (evaluate.n_samples of data/samples) are scored in Inception features against the train
statistics of the reference stage (FID, KID) next to the floor, as many reference test images scored
the same way; the independent evaluator (evaluate.evaluator) gives class agreement and a fast proxy
distance in its own features (pipeline/evaluation/distribution.py). The tokenizer is scored by the
reconstruct stage.
"""

import logging
import time
from pathlib import Path

from pipeline.paths import DECODER_DIR, GPT_DIR, METRICS, PLOTS, RAW, REFERENCE, SAMPLES, TOKENS
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)

METRICS_JSON = METRICS / "eval.json"
CLASSES_CSV = PLOTS / "eval_classes.csv"


@app.command()
def evaluate(params: Path = PARAMS_OPTION) -> None:
    """Score the GPT (test NLL) and the samples (Inception FID/KID vs the floor, class agreement)."""
    from pipeline.core.atomic import write_json
    from pipeline.evaluation.classifier import evaluator_label
    from pipeline.gpt.evaluate import evaluate_generator
    from pipeline.params import load_params

    p = load_params(params).evaluate
    t0 = time.perf_counter()
    metrics = evaluate_generator(p, GPT_DIR, DECODER_DIR, TOKENS, RAW, REFERENCE, SAMPLES, CLASSES_CSV)
    write_json(METRICS_JSON, metrics)
    gpt, s, floor = metrics["gpt"], metrics["samples"], metrics["floor_test_images"]
    label = evaluator_label(p.evaluator)
    log.info(
        "GPT test %.4f nats/token (%.1f bits/image; unigram %.1f); %d samples: Inception FID %.2f (floor %.2f), "
        "KID %.4f, precision %.3f, recall %.3f, fid_%s %.2f, class agreement %s -> %s (%.0f s)",
        gpt["test_nll"],
        gpt["test_bits_per_image"],
        gpt["unigram_test_entropy_bits_per_image"],
        s["n"],
        s["fid_inception"],
        floor["fid_inception"],
        s["kid_inception_mean"],
        s["precision_inception"],
        s["recall_inception"],
        label,
        s[f"fid_{label}"],
        "n/a" if s["class_agreement"] is None else f"{100 * s['class_agreement']:.1f} %",
        METRICS_JSON,
        time.perf_counter() - t0,
    )
