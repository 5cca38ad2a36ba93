"""extract: data/raw/cifar10.h5 -> frozen-encoder feature grids in data/features/features.h5."""

import logging
from pathlib import Path

from pipeline.paths import FEATURES, RAW
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)


@app.command()
def extract(params: Path = PARAMS_OPTION) -> None:
    """Encode every CIFAR-10 image into a grid of CNN features (see params.yaml `extract`)."""
    from pipeline.features.extract import run_extract
    from pipeline.params import load_params

    summary = run_extract(load_params(params).extract, RAW, FEATURES)
    log.info(
        "wrote %s: %d images x %d channels in %.1f s (%.0f images/s, %s)",
        FEATURES,
        summary["images"],
        summary["channels"],
        summary["seconds"],
        summary["images_per_s"],
        summary["precision"],
    )
