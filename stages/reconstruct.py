"""reconstruct: the tokenizer on test -> metrics/reconstruct.json.

The reference's test images (data/reference/inception.h5; the first reconstruct.n_images of them) are
turned into tokens' reconstructions by the trained decoder and scored against the originals: PSNR and
SSIM on [0, 1], the independent evaluator's accuracy (evaluate.evaluator), and rFID, the Inception FID
of the reconstructions against the statistics of the reference test images (published rFIDs: all
test images). No GPT is involved, so a tokenizer study re-runs decoder and this stage only.
"""

import logging
import time
from pathlib import Path

from stages import PARAMS_OPTION, app
from pipeline.paths import DECODER_DIR, METRICS, RAW, REFERENCE, TOKENS

log = logging.getLogger(__name__)

METRICS_JSON = METRICS / "reconstruct.json"


@app.command()
def reconstruct(params: Path = PARAMS_OPTION) -> None:
    """Score the tokenizer's test reconstructions: PSNR, SSIM, evaluator accuracy, rFID."""
    from pipeline.core.atomic import write_json
    from pipeline.core.runtime import resolve_device
    from pipeline.data import cifar10
    from pipeline.evaluation import inception
    from pipeline.evaluation.classifier import classifier_accuracy, load_evaluator
    from pipeline.evaluation.reconstruction import pixel_metrics
    from pipeline.evaluation.reference import description, fid_to, read_reference
    from pipeline.params import load_params
    from pipeline.tokenizer import files as tok
    from pipeline.tokenizer.decoding import load_token_decoder

    all_params = load_params(params)
    p, evaluator = all_params.reconstruct, all_params.evaluate.evaluator
    device = resolve_device(p.device)
    t0 = time.perf_counter()
    meta = tok.read_meta(TOKENS)
    test, raw_test = tok.read_split(TOKENS, "test", meta), cifar10.read_split(RAW, "test")
    tok.check_aligned(test, raw_test.images, raw_test.labels, TOKENS, RAW, "test")
    ref = read_reference(REFERENCE)
    idx = ref.test_indices[: p.n_images]
    originals, labels = raw_test.images[idx], raw_test.labels[idx]
    decoder = load_token_decoder(DECODER_DIR)
    reconstructions = decoder.decode(test.tokens[idx].numpy(), p.batch_size, device)
    metrics = {**pixel_metrics(originals, reconstructions), "evaluator": evaluator}
    metrics.update(classifier_accuracy(load_evaluator(evaluator), originals, reconstructions, labels, p.batch_size, device))
    features = inception.inception_features(inception.load_inception(), reconstructions, p.batch_size, device, ref.precision)
    metrics.update(
        rfid_inception=fid_to(features, ref.test), n_images=len(idx), tokens_per_image=int(test.tokens.shape[1]),
        kind=decoder.kind, inception=description(ref, len(idx), "test"), device=str(device), seconds=round(time.perf_counter() - t0, 1),
    )  # fmt: skip
    write_json(METRICS_JSON, metrics)
    log.info("reconstruct (%d test images, %d tokens each): PSNR %.2f dB, SSIM %.3f, %s accuracy %.1f %% (originals "
             "%.1f %%), rFID %.2f -> %s", len(idx), metrics["tokens_per_image"], metrics["psnr_db"], metrics["ssim"],
             evaluator, 100 * metrics["accuracy_reconstructions"], 100 * metrics["accuracy_originals"],
             metrics["rfid_inception"], METRICS_JSON)  # fmt: skip
