"""Training on several processes: DDP through the Trainer, launched by torchrun.

A train stage whose `<task>.train.processes` is over 1 re-launches itself, with the same arguments, under
`python -m torch.distributed.run --standalone` (so dvc.yaml keeps one command and DVC tracks the param). In
each process the Trainer (through accelerate) joins the process group: gloo on CPU, NCCL on GPUs.
`<task>.train.batch_size` stays the global batch, split evenly over the processes, so the same params make
the same optimisation on any process count. Rank 0 alone writes outputs and talks to MLflow; the others
train and evaluate beside it, as every collective (gradients, evaluation, saves) needs them.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from textops.errors import PipelineError

log = logging.getLogger("textops.distributed")
T = TypeVar("T")


def launched(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is one of a launcher's (torchrun and accelerate set these for each worker)."""
    return "LOCAL_RANK" in env or "WORLD_SIZE" in env


def needs_launch(processes: int, env: Mapping[str, str] = os.environ) -> bool:
    """Whether a train stage should start torchrun instead of training itself."""
    return processes > 1 and not launched(env)


def world_size(env: Mapping[str, str] = os.environ) -> int:
    """Processes training together, on every machine (1 outside a launch)."""
    return int(env.get("WORLD_SIZE", "1"))


def is_main(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this is rank 0, the process that writes outputs and logs to MLflow (outside a launch: yes)."""
    return int(env.get("RANK", "0")) == 0


def per_device_batch(batch_size: int, processes: int, section: str) -> int:
    """Each process's share of the global batch."""
    if batch_size % processes:
        raise PipelineError(
            f"{section}.batch_size={batch_size} does not split evenly over {processes} processes: it is the global "
            f"batch (each process takes an equal share), so set it to a multiple of {processes} or change "
            f"{section}.processes"
        )
    return batch_size // processes


def check_launch(processes: int, section: str, env: Mapping[str, str] = os.environ) -> None:
    """A launch by hand must start `processes` per machine: params.yaml (and so DVC) records what ran."""
    local = int(env.get("LOCAL_WORLD_SIZE", "1"))
    if launched(env) and local != processes:
        raise PipelineError(
            f"{local} processes per machine were launched, but {section}.processes is {processes}: "
            f"set -S {section}.processes={local}, or let the stage launch itself (run it without torchrun)"
        )


def trainer_args(batch_size: int, section: str, cuda: bool, env: Mapping[str, str] = os.environ) -> dict:
    """The TrainingArguments a launch decides: each process's batch and, for several processes without a GPU,
    DDP on the CPU over gloo. Without use_cpu, accelerate finds no device to spread over and every process
    trains alone on all the data (measured: both ranks saw every batch). On GPUs accelerate picks NCCL itself."""
    processes = world_size(env)
    args = {"per_device_train_batch_size": per_device_batch(batch_size, processes, section)}
    if processes > 1 and not cuda:
        args.update(use_cpu=True, ddp_backend="gloo")
    return args


def launch_command(module: str, argv: Sequence[str], processes: int) -> list[str]:
    # --standalone: a rendezvous on this machine at a free port, so two launches side by side do not collide.
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        module,
        *argv,
    ]


def die_with_parent() -> None:
    """Have the kernel send SIGTERM when this process's parent dies (Linux; elsewhere a no-op). torchrun starts
    each worker in a session of its own, out of reach of a signal to the stage's process group, which is how the
    flows stop a stage (pipelines/processes.py): after a SIGKILL of that group both workers trained on to the
    end, and rank 0 wrote the model (measured). So the workers die with torchrun, and torchrun with the stage."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def join_launch() -> None:
    """The start of a torchrun worker: it goes when torchrun goes (die_with_parent)."""
    die_with_parent()
    if os.getppid() == 1:  # torchrun died during this worker's start-up, before it could be told
        raise SystemExit("error: torchrun, which started this process, is gone")


def relaunch(module: str, argv: Sequence[str], processes: int) -> None:
    """Run `python -m module argv` as `processes` torchrun workers and wait for them."""
    command = launch_command(module, argv, processes)
    log.info("starting %d processes: %s", processes, shlex.join(command))
    with subprocess.Popen(command, preexec_fn=die_with_parent) as launcher:
        try:
            code = launcher.wait()
        except BaseException:
            # A stopped stage (SIGTERM, see textops.cli) stops its workers the same way: torchrun passes SIGTERM
            # on, and rank 0 ends its MLflow run FAILED. subprocess.run would SIGKILL torchrun and orphan them.
            launcher.terminate()
            launcher.wait()
            raise
    if code:
        raise PipelineError(
            f"the {processes} training processes under torchrun failed (exit code {code}); the failing rank's error "
            f"is above"
        )


def from_main(compute: Callable[[], T]) -> T:
    """compute()'s result on rank 0, given to every process: rank 0 alone runs it (it may write), the others wait
    for its answer. Call it once the Trainer exists (it joins the process group)."""
    if world_size() == 1:
        return compute()
    import torch.distributed as dist

    box = [compute() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@functools.cache
def load_onto_indexed_cpu() -> None:
    """Let torch.load take map_location "cpu:N" (once per process). The Trainer resumes a DDP run's optimizer
    state with map_location=args.device, which accelerate makes torch.device("cpu", 0) in CPU processes, and
    torch.load knows only "cpu": every resume failed with "don't know how to restore data location ... (tagged
    with cpu:0)". Such storages are loaded on the CPU already; saving is untouched (the tagger tags nothing)."""
    import torch.serialization

    def keep_on_cpu(storage, location: str):
        return storage if location.startswith("cpu:") else None

    torch.serialization.register_package(11, lambda storage: None, keep_on_cpu)  # 11: just after torch's "cpu"


def backend() -> str | None:
    """The process group's backend (gloo, nccl), or None for a single process."""
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None
