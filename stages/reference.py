"""reference: data/raw/cifar10.h5 -> Inception statistics of the real images in data/reference/inception.h5.

Depends on the raw images and the Inception code only, so no change downstream ever recomputes it.
metrics/reference.json records the floor at full size (fid_test_vs_train: FID of the reference test images
against the train statistics; studies/fid_reference.py validates it against the published value); info/ says
how the statistics were made.
"""

import logging
from pathlib import Path

from pipeline.paths import RAW, REFERENCE, results_paths
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)


@app.command()
def reference(params: Path = PARAMS_OPTION) -> None:
    """Inception features of the real images: the whole training set (sample FID/KID) and test (rFID, floor)."""
    from pipeline.core.results import write_results
    from pipeline.evaluation.reference import compute_reference
    from pipeline.params import load_params

    results = compute_reference(load_params(params).reference, RAW, REFERENCE)
    written = write_results(results, results_paths("reference"))
    m, info = results.metrics, results.info
    log.info(
        "wrote %s: %d train and %d test images in %.1f min (%.1f images/s); FID test vs train %.3f -> %s, %s",
        REFERENCE,
        info["reference_train_images"],
        info["reference_test_images"],
        m["reference_minutes"],
        m["reference_images_per_s"],
        m["fid_test_vs_train"],
        *written,
    )
