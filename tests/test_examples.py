"""examples/ddp_uniformity.py, run as documented (torchrun, 2 processes, gloo), against
single-process training on the whole batch with the paper's reference formulas."""

import os
import subprocess
import sys

import torch
from helpers import REPO, load_script

from pyhypersphere.reference import reference_align_loss, reference_uniform_loss

EXAMPLE = REPO / "examples" / "ddp_uniformity.py"
STEPS, BATCH, LR = 3, 48, 0.1


def _load_example():
    return load_script("examples/ddp_uniformity.py")


def _single_process(example):
    """The same training on the whole global batch in one process, reference losses, float64."""
    torch.manual_seed(0)
    model = example.Encoder().double()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for step in range(STEPS):
        v1, v2 = example.global_batch(step, BATCH, torch.float64)
        z1, z2 = model(torch.cat([v1, v2])).chunk(2)
        loss = reference_align_loss(z1, z2) + (reference_uniform_loss(z1) + reference_uniform_loss(z2)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state_dict()


def test_ddp_example_equals_single_process_training(tmp_path):
    saved = tmp_path / "encoder.pt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(EXAMPLE), "--steps", str(STEPS), "--batch", str(BATCH), "--lr", str(LR),
        "--dtype", "float64", "--threads", "1", "--device", "cpu", "--save", str(saved),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"step {STEPS - 1:>4}  loss" in done.stdout
    got = torch.load(saved)
    want = _single_process(_load_example())
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12, msg=name)
    # and training moved the weights (the comparison is not between two initial states)
    torch.manual_seed(0)
    initial = _load_example().Encoder().double().state_dict()
    assert not torch.allclose(got["net.0.weight"], initial["net.0.weight"])

