"""evaluate: GPT test NLL and sample quality -> metrics/eval.json (info/eval.json), plots/eval_classes.csv.

Samples (evaluate.n_samples of data/samples) are scored in Inception features against the train
statistics of the reference stage (FID, KID) next to the floor, as many reference test images scored
the same way; the independent evaluator (evaluate.evaluator) gives class agreement and a fast proxy
distance in its own features (pipeline/evaluation/distribution.py). The tokenizer is scored by the
reconstruct stage.
"""

import logging
import time
from pathlib import Path

from pipeline.paths import DECODER_DIR, GPT_DIR, PLOTS, RAW, REFERENCE, SAMPLES, TOKENS, results_paths
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)

CLASSES_CSV = PLOTS / "eval_classes.csv"


@app.command()
def evaluate(params: Path = PARAMS_OPTION) -> None:
    """Score the GPT (test NLL) and the samples (Inception FID/KID vs the floor, class agreement)."""
    from pipeline.core.results import write_results
    from pipeline.gpt.evaluate import evaluate_generator
    from pipeline.params import load_params

    p = load_params(params).evaluate
    t0 = time.perf_counter()
    results = evaluate_generator(p, GPT_DIR, DECODER_DIR, TOKENS, RAW, REFERENCE, SAMPLES, CLASSES_CSV)
    written = write_results(results, results_paths("eval"))
    m, info = results.metrics, results.info
    agreement = m.get("class_agreement")
    log.info(
        "GPT test %.4f nats/token (%.1f bits/image; unigram %.1f); %d samples: Inception FID %.2f (floor %.2f), "
        "KID %.4f, precision %.3f, recall %.3f, FID in %s features %.2f, class agreement %s -> %s, %s (%.0f s)",
        m["test_nll"],
        m["test_bits_per_image"],
        m["unigram_bits_per_image"],
        info["samples"],
        m["sample_fid"],
        m["floor_fid"],
        m["sample_kid"],
        m["sample_precision"],
        m["sample_recall"],
        p.evaluator,
        m["sample_fid_evaluator"],
        "n/a" if agreement is None else f"{100 * agreement:.1f} %",
        *written,
        time.perf_counter() - t0,
    )
