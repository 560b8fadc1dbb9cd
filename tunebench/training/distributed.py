"""``tunebench train|predict ... --gpus N``: re-execute the same command on N processes.

On GPUs the command goes through ``accelerate launch --multi_gpu --num_processes N``: DDP, one
process per GPU, for models whose bf16 weights fit one GPU (every size the study used). For a
model that does not fit, set ``training.fsdp: true``: the loop shards the base, the adapter and
the optimizer state with PyTorch's FSDP2 (:mod:`.fsdp`). Checkpoints are keyed by parameter
name, so a run resumes under DDP or FSDP on any number of processes. ``ACCELERATE_CONFIG_FILE``
(an ``accelerate config`` file, e.g. for several machines) replaces the default launcher flags;
its ``distributed_type`` must stay MULTI_GPU, since the loop does its own sharding.

Without CUDA the processes are started by ``torch.distributed.run`` and accelerate uses gloo
on CPU (what the tests run). The engine (:mod:`.loop`) gives each rank a strided share of each
optimizer step's examples; the result equals a 1-process run with the same ``batch_size``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from tunebench.errors import TunebenchError


def strip_gpus(argv: Sequence[str]) -> list[str]:
    """The command's arguments without ``--gpus N`` / ``--gpus=N`` (the children run 1 each)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--gpus":
            skip = True
            continue
        if arg.startswith("--gpus="):
            continue
        out.append(arg)
    return out


def launch_command(gpus: int, args: Sequence[str], cuda: bool | None = None) -> list[str]:
    """The launcher command line for ``tunebench <args>`` on ``gpus`` processes."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus)]
        if not os.environ.get("ACCELERATE_CONFIG_FILE"):
            launcher += [
                "--multi_gpu",
                "--num_machines",
                "1",
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
            ]
        else:
            launcher += ["--config_file", os.environ["ACCELERATE_CONFIG_FILE"]]
    else:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(gpus),
        ]
    return [*launcher, "-m", "tunebench", *args]


def launch(gpus: int, argv: Sequence[str]) -> int:
    """Run ``argv`` (``sys.argv`` of ``tunebench train|predict ... --gpus N``) on ``gpus``
    processes; returns the launcher's exit status."""
    if gpus < 1:
        raise TunebenchError(f"--gpus {gpus}: must be >= 1")
    args = strip_gpus(list(argv)[1:])
    import torch

    cuda = torch.cuda.is_available()
    if cuda and torch.cuda.device_count() < gpus:
        raise TunebenchError(f"--gpus {gpus}: only {torch.cuda.device_count()} GPU(s) visible")
    env = dict(os.environ)
    if not cuda:
        env["ACCELERATE_USE_CPU"] = "true"
    return subprocess.call(launch_command(gpus, args, cuda), env=env)
