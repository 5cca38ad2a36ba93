"""reference: data/raw/cifar10.h5 -> Inception statistics of the real images in data/reference/inception.h5.

Depends on the raw images and the Inception code only, so no change downstream ever recomputes it.
metrics/reference.json records the floor at full size: FID of the reference test images against the
train statistics (studies/fid_reference.py validates it against the published value).
"""

import logging
from pathlib import Path

from pipeline.paths import METRICS, RAW, REFERENCE
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)

METRICS_JSON = METRICS / "reference.json"


@app.command()
def reference(params: Path = PARAMS_OPTION) -> None:
    """Inception features of the real images: the whole training set (sample FID/KID) and test (rFID, floor)."""
    from pipeline.core.atomic import write_json
    from pipeline.evaluation.reference import compute_reference
    from pipeline.params import load_params

    metrics = compute_reference(load_params(params).reference, RAW, REFERENCE)
    write_json(METRICS_JSON, metrics)
    log.info(
        "wrote %s: %d train and %d test images in %.0f s (%.1f images/s); FID test vs train %.3f -> %s",
        REFERENCE,
        metrics["reference_train_images"],
        metrics["reference_test_images"],
        metrics["seconds"],
        metrics["images_per_second"],
        metrics["fid_inception_test_vs_train"],
        METRICS_JSON,
    )
