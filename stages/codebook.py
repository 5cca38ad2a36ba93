"""codebook: data/features/features.h5 -> k-means codebook + token grids (data/tokens/).

Also writes metrics/codebook.json and the code-usage plot (plots/codebook_usage.csv + .png).
With extract.encoder = pixels this is the classic demo's pixel-palette tokenizer: k-means over RGB.
"""

import logging
from pathlib import Path

from pipeline.paths import CODEBOOK, FEATURES, METRICS, PLOTS, TOKENS
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)

METRICS_JSON = METRICS / "codebook.json"


@app.command()
def codebook(params: Path = PARAMS_OPTION) -> None:
    """Fit FAISS k-means on sampled train features; tokenise train and test."""
    from pipeline.core.atomic import write_json
    from pipeline.params import load_params
    from pipeline.tokenizer.build import build_tokenizer

    p = load_params(params).codebook
    metrics = build_tokenizer(p, FEATURES, TOKENS, CODEBOOK, PLOTS)
    write_json(METRICS_JSON, metrics)
    log.info(
        "codebook: rel. error train %.4f val %.4f, first-code perplexity %.1f / %d, %d dead codes -> %s, %s",
        *(metrics["rel_quant_error_train"], metrics["rel_quant_error_val"], metrics["perplexity"], p.k),
        *(metrics["dead_codes"], TOKENS, CODEBOOK),
    )
