"""decoder: tokens + codebook -> a token-grid-to-image decoder, its validation metrics and plots.

CNN tokenizers train the inverse CNN (resuming from data/checkpoints/decoder; the saved decoder is the
epoch with the best validation curve: PSNR, or Inception FID against the reference's train statistics by
decoder.select); the `pixels` tokenizer gets its palette decoder with no
training. Both are scored the same way on the validation split (model selection); the reconstruct stage
reports the test split. The work is `decoder_training.run_decoder`; this file writes its metrics.
"""

import logging
from pathlib import Path

from pipeline.paths import (
    CODEBOOK,
    DECODER_CHECKPOINTS,
    DECODER_DIR,
    FEATURES,
    PLOTS,
    RAW,
    REFERENCE,
    TOKENS,
    results_paths,
)
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)

GRID_PNG = PLOTS / "reconstructions.png"
LOSS_CSV = PLOTS / "decoder_loss.csv"


@app.command()
def decoder(params: Path = PARAMS_OPTION) -> None:
    """Train (or build) the token decoder and score its validation reconstructions."""
    from pipeline.core.hashing import code_sha256
    from pipeline.core.results import write_results
    from pipeline.core.runtime import resolve_device, resolve_precision
    from pipeline.hints import slow_cpu_hint
    from pipeline.params import load_params
    from pipeline.tokenizer.decoder_training import DecoderPaths, run_decoder

    p = load_params(params).decoder
    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device, "decoder.precision")
    hint = slow_cpu_hint("decoder", p, precision) if device.type == "cpu" else ""
    paths = DecoderPaths(
        TOKENS, CODEBOOK, FEATURES, RAW, REFERENCE, DECODER_DIR, DECODER_CHECKPOINTS, LOSS_CSV, GRID_PNG
    )
    results = run_decoder(p, paths, device, precision, code=code_sha256("decoder"), slow_hint=hint)
    written = write_results(results, results_paths("decoder"))
    m, info = results.metrics, results.info
    log.info(
        "decoder (%s, %d tokens/image, epoch %d of %d): val PSNR %.2f dB, SSIM %.3f -> %s, %s, %s",
        info["kind"],
        info["tokens_per_image"],
        m["decoder_best_epoch"],
        info["epochs"],
        m["val_psnr_db"],
        m["val_ssim"],
        *written,
        GRID_PNG,
    )
