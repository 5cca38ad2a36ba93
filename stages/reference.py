"""reference: data/raw/cifar10.h5 -> Inception statistics of the real images in data/reference/inception.h5.

Depends on the raw images and the Inception code only, so no change downstream ever recomputes it.
metrics/reference.json records the floor at full size: FID of the reference test images against the
train statistics (studies/fid_reference.py validates it against the published value).
"""

import logging
import time
from pathlib import Path

from stages import PARAMS_OPTION, app
from pipeline.paths import METRICS, RAW, REFERENCE

log = logging.getLogger(__name__)

METRICS_JSON = METRICS / "reference.json"
SLOW_MINUTES = 30


@app.command()
def reference(params: Path = PARAMS_OPTION) -> None:
    """Inception features of the real images: the whole training set (sample FID/KID) and test (rFID, floor)."""
    from pipeline.core.atomic import write_json
    from pipeline.core.progress import Eta
    from pipeline.core.runtime import describe_cpu, native, resolve_device, resolve_feature_precision
    from pipeline.data import cifar10
    from pipeline.evaluation import inception
    from pipeline.evaluation.reference import build_reference, description, fid_to, write_reference
    from pipeline.params import load_params
    from pipeline.hints import slow_cpu_hint

    p = load_params(params).reference
    device = resolve_device(p.device)
    model = inception.load_inception()
    train, test = cifar10.read_source_train(RAW), cifar10.read_split(RAW, "test")
    total = sum(min(n or len(split.images), len(split.images)) for n, split in ((p.n_train, train), (p.n_test, test)))
    precision = resolve_feature_precision(p.precision, device)  # reconstruct and evaluate reuse it
    hint = ""
    if device.type == "cpu":
        emulated = precision == "bf16" and not native(device, "bf16")
        hint = (f"reference.precision = bf16 is emulated on this CPU ({describe_cpu()}): set it to auto or fp32"
                if emulated else slow_cpu_hint("reference", p, precision))  # fmt: skip
    eta = Eta("reference (Inception features)", total, "images", slow_minutes=SLOW_MINUTES, slow_hint=hint)
    t0 = time.perf_counter()
    ref = build_reference(model, train.images, test.images, n_train=p.n_train, n_test=p.n_test,
                          kid_images=p.kid_images, batch_size=p.batch_size, precision=precision, device=device,
                          seed=p.seed, progress=eta.update)  # fmt: skip
    seconds = time.perf_counter() - t0
    write_reference(ref, REFERENCE)
    floor = fid_to(ref.test_features, ref.train)
    write_json(METRICS_JSON, {
        **description(ref), "fid_inception_test_vs_train": floor, "device": str(device),
        "seconds": round(seconds, 1), "images_per_second": round(total / seconds, 2),
    })  # fmt: skip
    log.info("wrote %s: %d train and %d test images in %.0f s (%.1f images/s); FID test vs train %.3f -> %s",
             REFERENCE, ref.train.n, ref.test.n, seconds, total / seconds, floor, METRICS_JSON)  # fmt: skip
