"""sample: GPT + token decoder -> data/samples/samples.h5, data/samples/grid.png, plots/samples.png."""

import logging
from pathlib import Path

from pipeline.paths import DECODER_DIR, GPT_DIR, PLOTS, SAMPLE_GRID, SAMPLES, TOKENS
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)

README_GRID = PLOTS / "samples.png"


@app.command()
def sample(params: Path = PARAMS_OPTION) -> None:
    """Generate sample.n_per_class images per class (KV cache, temperature/top-k/top-p, guidance)."""
    from pipeline.gpt.sampling import generate_samples
    from pipeline.params import load_params

    p = load_params(params).sample
    done = generate_samples(p, GPT_DIR, DECODER_DIR, TOKENS, SAMPLES, SAMPLE_GRID, README_GRID)
    seconds = done["sample_seconds"] + done["decode_seconds"]
    log.info(
        "sampled %d images (%s, cfg_scale %g, T %g) in %.1f s + decoded in %.1f s on %s (%.0f images/s) -> %s, %s",
        done["images"],
        "conditional" if done["conditional"] else "unconditional",
        p.cfg_scale,
        p.temperature,
        done["sample_seconds"],
        done["decode_seconds"],
        done["device"],
        done["images"] / max(seconds, 1e-9),
        SAMPLES,
        README_GRID,
    )
