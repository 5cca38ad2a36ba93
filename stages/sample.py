"""sample: GPT + token decoder -> data/samples/samples.h5, data/samples/grid.png, plots/samples.png."""

import logging
import time
from pathlib import Path

from stages import PARAMS_OPTION, app
from pipeline.paths import DECODER_DIR, GPT_DIR, PLOTS, SAMPLE_GRID, SAMPLES, TOKENS

log = logging.getLogger(__name__)

README_GRID = PLOTS / "samples.png"


@app.command()
def sample(params: Path = PARAMS_OPTION) -> None:
    """Generate sample.n_per_class images per class (KV cache, temperature/top-k/top-p, guidance)."""
    from pipeline.core.artifacts import read_model_config
    from pipeline.core.atomic import write_bytes
    from pipeline.core.plots import save_png
    from pipeline.core.runtime import resolve_device
    from pipeline.gpt import sampling
    from pipeline.gpt.model import load_gpt
    from pipeline.params import load_params
    from pipeline.tokenizer import files as tok
    from pipeline.tokenizer.decoding import load_token_decoder

    p = load_params(params).sample
    device = resolve_device(p.device)
    meta = tok.read_meta(TOKENS)
    model = load_gpt(GPT_DIR, device)
    tok.check_compatible(model.cfg, meta, str(GPT_DIR), str(TOKENS))
    decoder = load_token_decoder(DECODER_DIR)
    sampling.check_decoder(model.cfg, decoder, str(GPT_DIR), str(DECODER_DIR))
    tok.check_same_codebook({
        str(GPT_DIR): read_model_config(GPT_DIR, "train").get("codebook_sha256"),
        str(DECODER_DIR): read_model_config(DECODER_DIR, "decoder").get("codebook_sha256"),
    }, str(TOKENS), meta)  # fmt: skip

    labels = sampling.sample_labels(model.cfg, p.n_per_class)
    t0 = time.perf_counter()
    tokens = sampling.sample_tokens(model, labels, p)
    t1 = time.perf_counter()
    images = decoder.decode(tokens, p.batch_size, device)
    t2 = time.perf_counter()
    sampling.write_samples(SAMPLES, tokens, labels, images, model.cfg, p, meta.classes, decoder.kind)

    fig = sampling.grid_figure(sampling.read_samples(SAMPLES))
    save_png(fig, SAMPLE_GRID)
    write_bytes(README_GRID, SAMPLE_GRID.read_bytes())
    log.info(
        "sampled %d images (%s, cfg_scale %g, T %g) in %.1f s + decoded in %.1f s on %s (%.0f images/s) -> %s, %s",
        len(images), "conditional" if model.cfg.conditional else "unconditional", p.cfg_scale, p.temperature,
        t1 - t0, t2 - t1, device, len(images) / max(t2 - t0, 1e-9), SAMPLES, README_GRID,
    )  # fmt: skip
