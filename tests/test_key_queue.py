"""nn.KeyQueue (MoCo's queue as a module): FIFO order, partial filling, wrap-around,
batches longer than the queue, the state dict, use with info_nce_loss / uniform_loss, and
errors.  Across ranks: tests/test_distributed_supcon.py."""

import pytest
import torch

from pyhypersphere import info_nce_loss, nn, uniform_loss


def batch(start, rows, dim=3):
    return torch.arange(start, start + rows, dtype=torch.float32)[:, None].expand(rows, dim).clone()


def firsts(queue):
    return queue.queue[:, 0].tolist()


def test_fifo_partial_and_wrapping():
    q = nn.KeyQueue(5, 3)
    assert len(q) == 0 and q.queue.shape == (0, 3)
    q.push(batch(0, 2))
    assert firsts(q) == [0, 1]  # partly filled: only the rows pushed
    q.push(batch(2, 2))
    assert firsts(q) == [0, 1, 2, 3]
    q.push(batch(4, 3))  # wraps: 0 and 1 dropped
    assert firsts(q) == [2, 3, 4, 5, 6] and len(q) == 5
    q.push(batch(7, 1))
    assert firsts(q) == [3, 4, 5, 6, 7]
    q.push(batch(8, 12))  # longer than the queue: its newest 5 rows
    assert firsts(q) == [15, 16, 17, 18, 19]


def test_keys_are_detached_and_cast():
    q = nn.KeyQueue(4, 2, dtype=torch.float64)
    keys = torch.randn(3, 2, requires_grad=True)
    q.push(keys)
    assert q.queue.dtype == torch.float64 and not q.queue.requires_grad
    torch.testing.assert_close(q.queue, keys.detach().double())


def test_state_dict_round_trip():
    q = nn.KeyQueue(4, 2)
    q.push(torch.randn(6, 2))
    assert set(q.state_dict()) == {"keys", "next_row", "filled"}
    restored = nn.KeyQueue(4, 2)
    restored.load_state_dict(q.state_dict())
    torch.testing.assert_close(restored.queue, q.queue)
    restored.push(batch(100, 1, 2))
    q.push(batch(100, 1, 2))
    torch.testing.assert_close(restored.queue, q.queue)


def test_queue_feeds_the_losses():
    q = nn.KeyQueue(8, 4, dtype=torch.float64)
    q.push(torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1))
    x, k = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    want_nce = info_nce_loss(x, k, queue=q.queue.clone())
    torch.testing.assert_close(info_nce_loss(x, k, queue=q.queue), want_nce)
    assert torch.isfinite(uniform_loss(x, queue=q.queue))


def test_errors():
    with pytest.raises(ValueError, match="KeyQueue: size must be a positive integer"):
        nn.KeyQueue(0, 3)
    with pytest.raises(ValueError, match="KeyQueue: dim must be a positive integer"):
        nn.KeyQueue(3, 2.5)
    with pytest.raises(ValueError, match="KeyQueue: dtype must be a floating-point"):
        nn.KeyQueue(3, 2, dtype=torch.int64)
    q = nn.KeyQueue(3, 2)
    with pytest.raises(ValueError, match=r"KeyQueue.push: keys must be a floating-point tensor of shape \[B, 2\]"):
        q.push(torch.randn(4, 3))
    with pytest.raises(TypeError, match="KeyQueue.push: keys must be a torch.Tensor"):
        q.push([[1.0, 2.0]])
