"""reconstruct: the tokenizer on test -> metrics/reconstruct.json.

The reference's test images (data/reference/inception.h5; the first reconstruct.n_images of them) are
turned into tokens' reconstructions by the trained decoder and scored against the originals: PSNR and
SSIM on [0, 1], the independent evaluator's accuracy (evaluate.evaluator), and rFID, the Inception FID
of the reconstructions against the statistics of the reference test images (published rFIDs: all
test images). No GPT is involved, so a tokenizer study re-runs decoder and this stage only.
"""

import logging
from pathlib import Path

from pipeline.paths import DECODER_DIR, METRICS, RAW, REFERENCE, TOKENS
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)

METRICS_JSON = METRICS / "reconstruct.json"


@app.command()
def reconstruct(params: Path = PARAMS_OPTION) -> None:
    """Score the tokenizer's test reconstructions: PSNR, SSIM, evaluator accuracy, rFID."""
    from pipeline.core.atomic import write_json
    from pipeline.params import load_params
    from pipeline.tokenizer.scoring import score_tokenizer

    all_params = load_params(params)
    p, evaluator = all_params.reconstruct, all_params.evaluate.evaluator
    metrics = score_tokenizer(p, evaluator, TOKENS, RAW, REFERENCE, DECODER_DIR)
    write_json(METRICS_JSON, metrics)
    log.info(
        "reconstruct (%d test images, %d tokens each): PSNR %.2f dB, SSIM %.3f, %s accuracy %.1f %% (originals "
        "%.1f %%), rFID %.2f -> %s",
        metrics["n_images"],
        metrics["tokens_per_image"],
        metrics["psnr_db"],
        metrics["ssim"],
        evaluator,
        100 * metrics["accuracy_reconstructions"],
        100 * metrics["accuracy_originals"],
        metrics["rfid_inception"],
        METRICS_JSON,
    )
