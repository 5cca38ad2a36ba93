"""download: CIFAR-10 (torchvision download or a local file) -> data/raw/cifar10.h5."""

import logging
from pathlib import Path

from pipeline.paths import RAW
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)


@app.command()
def download(params: Path = PARAMS_OPTION) -> None:
    """Get CIFAR-10 and write it, validated, to data/raw/cifar10.h5."""
    from pipeline.data import cifar10
    from pipeline.params import load_params

    counts = cifar10.download(load_params(params).download, RAW)
    log.info("wrote %s: %s images", RAW, counts)
