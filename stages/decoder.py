"""decoder: tokens + codebook -> a token-grid-to-image decoder, its test metrics and plots.

CNN tokenizers train the inverse CNN (resuming from data/checkpoints/decoder); the `pixels`
tokenizer gets its palette decoder with no training. Both are scored the same way on the validation
split (model selection); the reconstruct stage reports the test split.
"""

import logging
import time
from pathlib import Path

from stages import PARAMS_OPTION, app
from pipeline.paths import CODEBOOK, DECODER_CHECKPOINTS, DECODER_DIR, FEATURES, METRICS, PLOTS, RAW, TOKENS

log = logging.getLogger(__name__)

GRID_PNG = PLOTS / "reconstructions.png"
LOSS_CSV = PLOTS / "decoder_loss.csv"
METRICS_JSON = METRICS / "decoder.json"


@app.command()
def decoder(params: Path = PARAMS_OPTION) -> None:
    """Train (or build) the token decoder and score its validation reconstructions."""
    from pipeline.core.atomic import write_json
    from pipeline.core.hashing import code_sha256
    from pipeline.core.images import write_png
    from pipeline.core.runtime import resolve_device, resolve_precision
    from pipeline.evaluation.reconstruction import pixel_metrics
    from pipeline.params import load_params
    from pipeline.tokenizer import decoder_training as dt
    from pipeline.tokenizer.decoding import load_token_decoder, save_cnn_decoder, save_palette_decoder
    from pipeline.hints import slow_cpu_hint

    p = load_params(params).decoder
    inputs = dt.load_inputs(TOKENS, CODEBOOK, FEATURES, RAW)
    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device, "decoder.precision")
    extra = {"encoder": inputs.encoder, "layers": inputs.layers, "codebook_sha256": inputs.codebook_sha256}
    history, train_seconds = [], 0.0
    if inputs.is_palette:
        save_palette_decoder(dt.palette_colours(inputs), DECODER_DIR, extra)
        # The checkpoint folder is a declared (persist) output: say why it holds no checkpoint.
        write_json(DECODER_CHECKPOINTS / "palette.json", {"kind": "palette", "note": "no training, no checkpoint"})
    else:
        feature_loss = dt.build_feature_loss(inputs, device) if p.perceptual_weight > 0 else None
        hint = slow_cpu_hint("decoder", p, precision) if device.type == "cpu" else ""
        result = dt.train_decoder(p, inputs, DECODER_CHECKPOINTS, device, precision, code_sha256("decoder"),
                                  feature_loss, slow_hint=hint)  # fmt: skip
        save_cnn_decoder(result.model.cpu(), DECODER_DIR, extra | {"precision": precision})
        history, train_seconds = result.history, result.train_seconds
    dt.write_history_csv(history, LOSS_CSV)

    t0 = time.perf_counter()
    token_decoder = load_token_decoder(DECODER_DIR)
    reconstructions = token_decoder.decode(inputs.val_tokens, p.batch_size, device)
    metrics = pixel_metrics(inputs.val_images, reconstructions)  # classifier scores: the reconstruct stage
    metrics.update(
        split="val", kind=token_decoder.kind, encoder=inputs.encoder, tokens_per_image=int(inputs.val_tokens.shape[1]),
        k=token_decoder.k, n_images=len(reconstructions), epochs=len(history), train_seconds=round(train_seconds, 1),
        eval_seconds=round(time.perf_counter() - t0, 1), device=str(device), precision=precision,
    )  # fmt: skip
    write_json(METRICS_JSON, metrics)
    write_png(dt.reconstruction_grid(inputs.val_images, reconstructions), GRID_PNG)
    log.info(
        "decoder (%s, %d tokens/image): val PSNR %.2f dB, SSIM %.3f -> %s, %s",
        token_decoder.kind, metrics["tokens_per_image"], metrics["psnr_db"], metrics["ssim"], METRICS_JSON, GRID_PNG,
    )  # fmt: skip
