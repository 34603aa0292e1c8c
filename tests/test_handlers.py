"""Training handlers: dual early stopping, the non-finite loss guard, finding the checkpoint to resume from."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from torch import nn

from scripts.handlers import DualEarlyStopping, NonFiniteLossGuard, latest_epoch_checkpoint


def run_validations(metrics: list[tuple[float, float]], patience: int) -> tuple[int, DualEarlyStopping]:
    """Feed (accuracy, loss) pairs to the handler through a real validator; return epochs run before stopping."""
    history = iter(metrics)
    validator = Engine(lambda engine, batch: None)

    @validator.on(Events.COMPLETED)
    def set_metrics(engine):
        accuracy, loss = next(history)
        engine.state.metrics = {"val_accuracy": accuracy, "val_loss": loss}

    trainer = Engine(lambda engine, batch: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: validator.run([0]))
    stopper = DualEarlyStopping(validator=validator, patience=patience)
    stopper.attach(trainer)
    trainer.run([0], max_epochs=len(metrics))
    return trainer.state.epoch, stopper


def test_stops_only_when_neither_metric_improved_for_patience_validations():
    # Accuracy stalls after epoch 1, loss keeps improving until epoch 4: the loss counter keeps training alive
    # until epoch 4 + 2 (patience) = 6.
    metrics = [(0.6, 1.0), (0.5, 0.9), (0.55, 0.8), (0.6, 0.7), (0.5, 0.75), (0.5, 0.72), (0.9, 0.1), (0.9, 0.1)]
    epochs, stopper = run_validations(metrics, patience=2)
    assert epochs == 6
    assert stopper.best_accuracy == 0.6 and stopper.best_loss == 0.7
    assert stopper.accuracy_counter == 5 and stopper.loss_counter == 2


def test_improving_accuracy_alone_keeps_training_going():
    metrics = [(0.5 + 0.05 * i, 1.0) for i in range(8)]
    epochs, stopper = run_validations(metrics, patience=2)
    assert epochs == 8
    assert stopper.loss_counter == 7 and stopper.accuracy_counter == 0


def test_early_stopping_state_round_trips():
    _, stopper = run_validations([(0.6, 1.0), (0.5, 1.2)], patience=5)
    other = DualEarlyStopping(validator=Engine(lambda e, b: None), patience=5)
    other.load_state_dict(stopper.state_dict())
    assert other.state_dict() == {"best_accuracy": 0.6, "best_loss": 1.0, "accuracy_counter": 1, "loss_counter": 1}
    assert math.isinf(DualEarlyStopping(validator=Engine(lambda e, b: None)).best_loss)


def make_trainer(images: list[torch.Tensor], guard: NonFiniteLossGuard) -> tuple[SupervisedTrainer, nn.Module]:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
    batches = [
        {"image": image, "label": torch.tensor([0, 1]), "image_id": [f"I{2 * i}", f"I{2 * i + 1}"]}
        for i, image in enumerate(images)
    ]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=0.1, weight_decay=0.01),
        loss_function=nn.CrossEntropyLoss(),
        train_handlers=[guard],
        decollate=False,
    )
    return trainer, network


def test_non_finite_loss_never_updates_weights_and_names_the_scans(caplog):
    nan_batch = torch.full((2, 8), float("nan"))
    guard = NonFiniteLossGuard(max_consecutive=3)
    trainer, network = make_trainer([nan_batch], guard)
    before = [p.detach().clone() for p in network.parameters()]
    with caplog.at_level(logging.WARNING, logger="scripts.handlers"):
        trainer.run()
    for old, new in zip(before, network.parameters(), strict=True):
        assert torch.equal(old, new)  # no step and no weight decay either
    assert guard.skipped == [["I0", "I1"]]
    assert "I0, I1" in caplog.text


def test_finite_batches_after_a_non_finite_one_still_train():
    good = torch.randn(2, 8)
    guard = NonFiniteLossGuard(max_consecutive=2)
    trainer, network = make_trainer([torch.full((2, 8), float("inf")), good, good], guard)
    before = [p.detach().clone() for p in network.parameters()]
    trainer.run()
    assert guard.consecutive == 0 and len(guard.skipped) == 1
    assert any(not torch.equal(old, new) for old, new in zip(before, network.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in network.parameters())


def test_too_many_non_finite_losses_in_a_row_stop_training():
    nan_batch = torch.full((2, 8), float("nan"))
    guard = NonFiniteLossGuard(max_consecutive=2)
    trainer, _ = make_trainer([nan_batch, nan_batch, nan_batch], guard)
    with pytest.raises(RuntimeError, match=r"2 non-finite losses in a row \(last batch: I2, I3\)"):
        trainer.run()


def test_latest_epoch_checkpoint_picks_the_highest_epoch(tmp_path):
    assert latest_epoch_checkpoint(tmp_path / "absent") is None
    for name in ("checkpoint_epoch=2.pt", "checkpoint_epoch=10.pt", "model.pt", "checkpoint_epoch=9.pt.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert latest_epoch_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=10.pt"
