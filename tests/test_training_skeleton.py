"""core.training, the skeleton both trainers share: seeds, best-epoch selection, resume, the step."""

import pytest
import torch

from pipeline.core.checkpoint import Checkpoint
from pipeline.core.training import Run, Selection, derive_seed, fit, resume, set_lr, train_step


def test_derive_seed_is_deterministic_and_the_gpts_formula():
    assert derive_seed(7, 3, 2) == derive_seed(7, 3, 2) == 7 * 1_000_003 + 3 * 7_919 + 2
    assert derive_seed(7, 5) == 7 * 1_000_003 + 5  # one part: (seed, step)
    seeds = {derive_seed(s, e, stream) for s in range(3) for e in range(50) for stream in range(4)}
    assert len(seeds) == 3 * 50 * 4  # every (seed, epoch, stream) its own generator
    assert 0 <= derive_seed(2**62, 10**9, 5) < 2**63  # fits torch's manual_seed


def _run(lr: float = 0.1) -> Run:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return Run(model, opt, torch.amp.GradScaler("cpu", enabled=False))


def _fit(run: Run, checkpoint, values: list[float], selection: Selection, **kwargs) -> Run:
    """Each epoch sets the weight to the epoch number and 'validates' to values[epoch]."""

    def train_epoch(epoch: int) -> dict:
        with torch.no_grad():
            run.model.weight.fill_(epoch + 1)
        run.step += 1
        return {"train_loss": float(epoch)}

    return fit(
        run,
        checkpoint,
        len(values),
        train_epoch,
        lambda: {"val": values[run.epoch]},
        selection,
        describe=lambda r, s: f"val {r['val']}",
        **kwargs,
    )


@pytest.mark.parametrize("higher, best", [(True, 2), (False, 4)])
def test_fit_keeps_the_best_epoch_lower_or_higher_is_better(tmp_path, higher, best):
    values = [1.0, 5.0, 3.0, 0.5]
    ckpt = Checkpoint(tmp_path, "run", "t")
    run = _fit(_run(), ckpt, values, Selection("val", higher_is_better=higher))
    assert [h["epoch"] for h in run.history] == [1, 2, 3, 4] and [h["val"] for h in run.history] == values
    assert run.best["epoch"] == best and run.best["value"] == values[best - 1]
    assert torch.all(run.model.weight == best)  # the model ends as the best epoch
    saved = ckpt.load()
    assert saved["epoch"] == 4 and saved["step"] == 4 and saved["best"]["epoch"] == best
    assert torch.all(saved["model"]["weight"] == 4)  # the checkpoint holds the last epoch


def test_fit_resumes_where_the_checkpoint_ends(tmp_path):
    values, selection = [3.0, 1.0, 2.0], Selection("val", higher_is_better=False)

    class Killed(Exception):
        pass

    def kill(epoch: int) -> None:
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        _fit(_run(), Checkpoint(tmp_path, "run", "t"), values, selection, on_epoch_end=kill)
    epochs_run = []
    run = resume(_run(), Checkpoint(tmp_path, "run", "t"))
    assert (run.epoch, run.step, run.best["epoch"]) == (2, 2, 2)
    run = _fit(run, Checkpoint(tmp_path, "run", "t"), values, selection, on_epoch_end=epochs_run.append)
    assert epochs_run == [3] and [h["epoch"] for h in run.history] == [1, 2, 3] and run.best["epoch"] == 2
    assert resume(_run(), Checkpoint(tmp_path, "other run", "t")).epoch == 0  # other params/inputs/code: fresh


def test_train_step_sets_lr_clips_and_returns_the_detached_loss():
    run = _run(lr=1.0)
    set_lr(run.optimizer, 0.5)
    assert run.optimizer.param_groups[0]["lr"] == 0.5
    x, y = torch.ones(4, 2), torch.zeros(4, 1)
    before = run.model.weight.detach().clone()

    def loss_of(x, y):
        return torch.nn.functional.mse_loss(run.model(x), y) * 1e6  # a huge gradient

    loss = train_step(
        loss_of,
        (x, y),
        run.optimizer,
        run.scaler,
        torch.device("cpu"),
        "fp32",
        grad_clip=1.0,
        params=run.model.parameters(),
    )
    assert not loss.requires_grad and loss.item() > 0
    # clipped to norm 1 over weight and bias, times lr 0.5: the weight moves by at most 0.5
    assert 0 < (before - run.model.weight).norm() <= 0.5 + 1e-6
