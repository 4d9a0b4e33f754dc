"""benchmarks/large_batch_accuracy.py builds a ``pyhypersphere train`` command the trainer accepts."""

import argparse
from pathlib import Path

from helpers import load_script

from pyhypersphere.train import cli

script = load_script("benchmarks/large_batch_accuracy.py")


def trainer_config(cmd):
    """The TrainConfig the trainer's own parser makes of the command's arguments."""
    assert cmd[1:4] == ["-m", "pyhypersphere", "train"]
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.config_from_args(parser.parse_args(cmd[4:]))


def test_loss_and_tau_reach_the_trainer():
    args = script.parse_args(["--loss", "infonce", "--tau", "0.5", "--lr-rule", "sqrt"])
    config = trainer_config(script.train_command(16384, args, Path("out")))
    assert (config.loss, config.tau) == ("infonce", 0.5)
    assert (config.batch_size, config.chunk_size, config.num_samples, config.epochs) == (16384, 1024, 20480, 3)
    assert config.lr == 0.12 * 8  # sqrt(16384 / 256) = 8


def test_defaults_are_the_trainers():
    args = script.parse_args([])
    config = trainer_config(script.train_command(256, args, Path("out")))
    assert (config.loss, config.tau) == ("align_uniform", 0.2)
    assert config.lr == 0.12  # linear rule at batch 256
