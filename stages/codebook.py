"""codebook: data/features/features.h5 -> k-means codebook + token grids (data/tokens/).

Also writes metrics/codebook.json (info/codebook.json) and the code-usage plot (plots/codebook_usage.csv + .png).
With extract.encoder = pixels this is the classic demo's pixel-palette tokenizer: k-means over RGB.
"""

import logging
from pathlib import Path

from pipeline.paths import CODEBOOK, FEATURES, PLOTS, TOKENS, results_paths
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)


@app.command()
def codebook(params: Path = PARAMS_OPTION) -> None:
    """Fit FAISS k-means on sampled train features; tokenise train and test."""
    from pipeline.core.results import write_results
    from pipeline.params import load_params
    from pipeline.tokenizer.build import build_tokenizer

    p = load_params(params).codebook
    results = build_tokenizer(p, FEATURES, TOKENS, CODEBOOK, PLOTS)
    written = write_results(results, results_paths("codebook"))
    m = results.metrics
    log.info(
        "codebook: rel. error train %.4f val %.4f, first-code perplexity %.1f / %d, %d dead codes -> %s, %s, %s, %s",
        *(m["rel_quant_error_train"], m["rel_quant_error_val"], m["perplexity"], p.k),
        *(m["dead_codes"], TOKENS, CODEBOOK, *written),
    )
