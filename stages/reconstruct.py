"""reconstruct: the tokenizer on test -> metrics/reconstruct.json (info/reconstruct.json).

The reference's test images (data/reference/inception.h5; the first reconstruct.n_images of them) are
turned into tokens' reconstructions by the trained decoder and scored against the originals: PSNR and
SSIM on [0, 1], the independent evaluator's accuracy (evaluate.evaluator), and rFID, the Inception FID
of the reconstructions against the statistics of the reference test images (published rFIDs: all
test images). No GPT is involved, so a tokenizer study re-runs decoder and this stage only.
"""

import logging
from pathlib import Path

from pipeline.paths import DECODER_DIR, RAW, REFERENCE, TOKENS, results_paths
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)


@app.command()
def reconstruct(params: Path = PARAMS_OPTION) -> None:
    """Score the tokenizer's test reconstructions: PSNR, SSIM, evaluator accuracy, rFID."""
    from pipeline.core.results import write_results
    from pipeline.params import load_params
    from pipeline.tokenizer.scoring import score_tokenizer

    all_params = load_params(params)
    p, evaluator = all_params.reconstruct, all_params.evaluate.evaluator
    results = score_tokenizer(p, evaluator, TOKENS, RAW, REFERENCE, DECODER_DIR)
    written = write_results(results, results_paths("reconstruct"))
    m, info = results.metrics, results.info
    log.info(
        "reconstruct (%d test images, %d tokens each): PSNR %.2f dB, SSIM %.3f, %s accuracy %.1f %% (originals "
        "%.1f %%), rFID %.2f -> %s, %s",
        info["n_images"],
        info["tokens_per_image"],
        m["test_psnr_db"],
        m["test_ssim"],
        evaluator,
        100 * m["accuracy_reconstructions"],
        100 * m["accuracy_originals"],
        m["rfid"],
        *written,
    )
