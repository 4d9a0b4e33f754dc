"""The trainer's supervised objective (--loss supcon): a tiny MNIST-1D run with the class
labels, the objective against the dense float64 formula on the two views, and the
clear error for a dataset with unlabeled training samples."""

import pytest
import torch

pytest.importorskip("mnist1d")

from dense_contrastive import dense_supcon  # noqa: E402
from helpers import isolated_cache, tiny_config  # noqa: E402,F401  (isolated_cache: autouse fixture)
from pyhypersphere.train import TrainConfig, data, loop, train  # noqa: E402


def test_supcon_runs_on_mnist1d(tmp_path):
    s = train(tiny_config(tmp_path / "supcon", loss="supcon", epochs=1))
    assert s["loss"] == "supcon" and 0.0 <= s["linear_probe_acc"] <= 1.0


def test_objective_is_supcon_over_both_views():
    cfg = TrainConfig(batch_size=12, loss="supcon", tau=0.2).resolved()
    objective = loop._Objective(cfg, world=1)
    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.nn.functional.normalize(torch.randn(12, 5, generator=g), dim=1) for _ in range(2))
    labels = torch.randint(0, 4, (12,), generator=g)
    loss, value, _, _ = objective(z1, z2, labels)
    want = dense_supcon(torch.cat([z1, z2]).double(), torch.cat([labels, labels]), 0.2)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0)
    assert value == loss.detach()


def test_unlabeled_training_samples_are_refused():
    d = data.Data(name="with-extra", kind="signal", x_train=torch.zeros(4, 3), y_train=torch.zeros(4, dtype=torch.int64),
                  x_test=torch.zeros(2, 3), y_test=torch.zeros(2, dtype=torch.int64), class_names=["a"],
                  mean=torch.zeros(()), std=torch.ones(()), x_extra=torch.zeros(5, 3))
    with pytest.raises(ValueError, match="--loss supcon needs the class label of every training sample"):
        d.train_labels()
