"""Where a sweep's cells run: this process, N local worker processes pinned to devices, or a Slurm
job array through submitit.

Every launcher calls the same cell function (:func:`fdalign.experiments.sweep.run_cell`) once per
cell and hands its status back through ``on_end``; the cell function claims its run directory
itself (:func:`fdalign.io.run_lock`), so launchers never decide who runs what, they only place work.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdalign.errors import FDAlignError

OnStart = Callable[[int, Any], None]
OnEnd = Callable[[int, Any, dict], None]


class Interrupted(Exception):
    """Ctrl-C during a run: the sweep stops (the run's checkpoint lets the next invocation resume)."""


class InProcess:
    """One cell after another in this process (the default: what ``--workers 1`` means)."""

    slots = 1

    def run(self, fn: Callable, cells: Sequence, on_start: OnStart, on_end: OnEnd) -> None:
        with sigterm_as_ctrl_c():
            for cell in cells:
                on_start(0, cell)
                on_end(0, cell, fn(cell))


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (``kill``, Slurm's time limit) stops the sweep as Ctrl-C does: the running cells checkpoint
    and say interrupted, and the next invocation resumes them. Only in the main thread (where signal
    handlers live); elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# ----------------------------------------------------------------------------------------------
# local worker processes


def _init_worker(device: str | None, threads: int | None, parent: int | None = None) -> None:
    """A worker's first act: its own process group (the terminal's Ctrl-C reaches only the sweep,
    which forwards it once to the busy workers), Ctrl-C noted while no cell runs, a Ctrl-C of its own
    when the sweep dies (:func:`_ctrl_c_when_parent_dies`), its device, its threads."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, _note_ctrl_c)
    if parent is not None:
        _ctrl_c_when_parent_dies(parent)
    if device is not None:  # before torch touches CUDA: the worker sees only its device, as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def _ctrl_c_when_parent_dies(parent: int) -> None:
    """Linux: the sweep killed (``kill``, SIGKILL, the OOM killer) sends this worker a Ctrl-C, so its run
    checkpoints and says interrupted instead of training on unseen, holding its cell's lock. Elsewhere a
    no-op: the sweep's own Ctrl-C / SIGTERM path stops the workers."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    global _parent
    _parent = parent
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGINT)
    if _orphaned():  # the sweep died before the link was made
        os._exit(1)


_parent: int | None = None  # in a worker: its sweep's pid


def _orphaned() -> bool:
    """In a worker: whether its sweep has died. Then no further cell comes and no result is read, and the
    worker's call queue never reports the end (the worker holds both ends of its pipe): it must exit itself."""
    return _parent is not None and os.getppid() != _parent


def _sigterm_as_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt


_ctrl_c = False  # a Ctrl-C that reached this worker while no cell was running in it


def _note_ctrl_c(signum, frame) -> None:
    global _ctrl_c
    if _orphaned():  # an idle worker whose sweep died
        os._exit(1)
    _ctrl_c = True


def _call(fn: Callable, cell) -> dict:
    """Run one cell in a worker; Ctrl-C (forwarded by the sweep) becomes :class:`Interrupted`.

    The sweep forwards Ctrl-C to every worker it has handed a cell to, and a worker may not have
    started that cell yet: such a Ctrl-C was noted, and the cell is then not started at all."""
    global _ctrl_c
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if _ctrl_c:
            _ctrl_c = False
            raise KeyboardInterrupt
        return fn(cell)
    except KeyboardInterrupt:
        raise Interrupted(str(getattr(getattr(cell, "run", None), "key", cell))) from None
    finally:
        signal.signal(signal.SIGINT, _note_ctrl_c)
        if _orphaned():  # its run has checkpointed and said interrupted; nobody reads the result
            os._exit(1)


@dataclass
class LocalWorkers:
    """``workers`` spawned processes, worker i pinned to ``devices[i % len(devices)]`` through
    CUDA_VISIBLE_DEVICES (none given: every worker sees what this process sees), each running one
    cell at a time; ``threads`` torch threads per worker (default: the CPUs shared out)."""

    workers: int
    devices: Sequence[str] = ()
    threads: int | None = None

    def __post_init__(self):
        if self.workers < 1:
            raise FDAlignError(f"--workers {self.workers}: give 1 or more")
        bad = [d for d in map(str, self.devices) if not (d.isdigit() or d.startswith(("GPU-", "MIG-")))]
        if bad:
            raise FDAlignError(
                f"--devices {','.join(map(str, self.devices))}: {bad[0]!r} is not a GPU; give "
                "indices as nvidia-smi lists them (e.g. --devices 0,1,2,3) or GPU-/MIG- UUIDs"
            )

    @property
    def slots(self) -> int:
        return self.workers

    def _start(self, i: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        device = str(self.devices[i % len(self.devices)]) if self.devices else None
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.workers)
        ex = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(device, threads, os.getpid()),
        )
        return ex, ex.submit(os.getpid).result()  # the pid, to forward Ctrl-C to

    def run(self, fn: Callable, cells: Sequence, on_start: OnStart, on_end: OnEnd) -> None:
        with sigterm_as_ctrl_c():
            self._run(fn, cells, on_start, on_end)

    def _run(self, fn: Callable, cells: Sequence, on_start: OnStart, on_end: OnEnd) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        pending, running, pools = list(cells), {}, {}  # running: future -> (slot, cell)
        stop: BaseException | None = None
        try:
            while pending or running:
                busy = {slot for slot, _ in running.values()}
                for slot in range(self.workers):
                    if pending and stop is None and slot not in busy:
                        if slot not in pools:
                            pools[slot] = self._start(slot)
                        cell = pending.pop(0)
                        running[pools[slot][0].submit(_call, fn, cell)] = (slot, cell)
                        on_start(slot, cell)
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for f in done:
                    slot, cell = running.pop(f)
                    try:
                        status = f.result()
                    except Interrupted as e:  # a worker's run was interrupted: stop the others too, once
                        if stop is None:
                            stop = e
                            self._interrupt(pools, running)
                        continue
                    except Exception as e:  # the worker process died (killed, out of memory): a new one next
                        pools.pop(slot)[0].shutdown(wait=False, cancel_futures=True)
                        status = {"state": "failed", "error": f"worker process died: {type(e).__name__}: {e}"}
                    on_end(slot, cell, status)
                if stop is not None:
                    pending.clear()
        except KeyboardInterrupt as e:
            stop = e
            pending.clear()
            self._interrupt(pools, running)
            self._drain(running, on_end)
        finally:
            for ex, _ in pools.values():
                ex.shutdown(wait=True, cancel_futures=True)
        if stop is not None:
            raise Interrupted(str(stop)) from None

    @staticmethod
    def _interrupt(pools: dict, running: dict) -> None:
        """Ctrl-C, once, to every busy worker: its run checkpoints and says interrupted."""
        for slot in {slot for slot, _ in running.values()}:
            try:
                os.kill(pools[slot][1], signal.SIGINT)
            except ProcessLookupError:
                pass

    @staticmethod
    def _drain(running: dict, on_end: OnEnd) -> None:
        """Wait for the interrupted runs to write their state (a second Ctrl-C stops waiting)."""
        from concurrent.futures import wait

        try:
            for f in wait(list(running)).done:
                try:
                    on_end(*running[f], f.result())
                except Exception:  # Interrupted, or a worker that died: its status.json says what it did
                    pass
        except KeyboardInterrupt:
            pass
        running.clear()


# ----------------------------------------------------------------------------------------------
# Slurm through submitit


@dataclass
class SlurmOptions:
    """What each array task asks Slurm for (``fdalign sweep --launcher slurm`` flags)."""

    partition: str | None = None
    time: int = 240  # minutes per cell
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    mem_gb: int | None = None
    array_parallelism: int = 32
    sbatch: list[str] = field(default_factory=list)  # extra flags, "key=value" (e.g. account=proj, qos=high)

    def __post_init__(self):
        # a bad number would otherwise surface only in Slurm's rejection of the array, after planning
        least = {"time": 1, "gpus_per_task": 0, "cpus_per_task": 1, "array_parallelism": 1}
        for name, low in least.items():
            if getattr(self, name) < low:
                raise FDAlignError(f"--{name.replace('_', '-')} {getattr(self, name)}: give {low} or more")
        if self.mem_gb is not None and self.mem_gb < 1:
            raise FDAlignError(f"--mem-gb {self.mem_gb}: give 1 or more (or leave it out: the partition's default)")

    def extra(self) -> dict:
        out = {}
        for item in self.sbatch:
            key, eq, value = str(item).lstrip("-").partition("=")
            if not key:
                raise FDAlignError(f"--sbatch {item!r}: write KEY=VALUE, e.g. --sbatch account=myproject")
            out[key.replace("-", "_")] = value if eq else True
        return out

    def sbatch_lines(self, n: int, name: str) -> list[str]:
        """The #SBATCH header of the array (what --dry-run prints)."""
        lines = [
            f"--job-name={name}",
            f"--array=0-{n - 1}%{self.array_parallelism}",
            "--ntasks-per-node=1",
            f"--time={self.time}",
            f"--cpus-per-task={self.cpus_per_task}",
        ]
        if self.gpus_per_task:
            lines.append(f"--gpus-per-node={self.gpus_per_task}")
        if self.partition:
            lines.append(f"--partition={self.partition}")
        if self.mem_gb:
            lines.append(f"--mem={self.mem_gb}GB")
        lines += [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in self.extra().items()]
        return [f"#SBATCH {x}" for x in lines]


class _Task:
    """The array task: one cell. On pre-emption or time-out submitit calls :meth:`checkpoint` and
    requeues the same cell, which resumes from its run's checkpoint."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, cell) -> dict:
        return self.fn(cell)

    def checkpoint(self, cell):
        import submitit

        return submitit.helpers.DelayedSubmission(self, cell)


JOBS_FILE = "jobs.json"
_LIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


@dataclass
class Submitit:
    """One Slurm array task per cell (``local=True``: submitit's LocalExecutor, the same path on this
    machine). ``folder`` keeps submitit's logs and ``jobs.json`` (cell -> job id), by which the next
    call leaves alone the cells still queued or running; failed, pre-empted and missing ones go again."""

    folder: str
    options: SlurmOptions = field(default_factory=SlurmOptions)
    local: bool = False
    wait: bool = True
    name: str = "fdalign-sweep"
    slots: int = 1

    def executor(self):
        try:
            import submitit
        except ImportError:
            raise FDAlignError("--launcher slurm needs submitit: pip install 'fdalign[slurm]'") from None
        o = self.options
        if self.local:
            ex = submitit.LocalExecutor(folder=self.folder)
            ex.update_parameters(timeout_min=o.time, gpus_per_node=0)
            return ex
        ex = submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        kw = dict(
            name=self.name,
            timeout_min=o.time,
            gpus_per_node=o.gpus_per_task,
            tasks_per_node=1,
            nodes=1,
            cpus_per_task=o.cpus_per_task,
            slurm_array_parallelism=o.array_parallelism,
            slurm_additional_parameters=o.extra(),
        )
        if o.partition:
            kw["slurm_partition"] = o.partition
        if o.mem_gb:
            kw["mem_gb"] = o.mem_gb
        ex.update_parameters(**kw)
        return ex

    def _jobs(self) -> dict:
        p = Path(self.folder) / JOBS_FILE
        if not p.is_file():
            return {}
        from fdalign.io import read_json

        return dict(read_json(p, "submitted jobs"))

    def live(self, keys: Sequence[str]) -> set[str]:
        """The cells whose last job Slurm still has queued or running (never for the local executor,
        whose jobs end with the call that waited for them)."""
        jobs, live = self._jobs(), set()
        if self.local:
            return live
        try:
            from submitit.slurm.slurm import SlurmJob
        except ImportError:
            return live
        for key in keys:
            if key in jobs:
                try:
                    if SlurmJob(folder=self.folder, job_id=jobs[key]).state in _LIVE:
                        live.add(key)
                except Exception:  # no sacct here: resubmit; the cell's run lock stops a double run
                    pass
        return live

    def run(self, fn: Callable, cells: Sequence, on_start: OnStart, on_end: OnEnd) -> None:
        from fdalign.io import atomic_write_json

        if not cells:
            return
        ex = self.executor()
        jobs = ex.map_array(_Task(fn), list(cells))
        ids = self._jobs()
        ids.update({c.run.key: j.job_id for c, j in zip(cells, jobs)})
        atomic_write_json(Path(self.folder) / JOBS_FILE, ids)
        for i, (c, j) in enumerate(zip(cells, jobs)):
            on_start(i, c)
        if not self.wait:
            return
        for i, (c, j) in enumerate(zip(cells, jobs)):
            try:
                status = j.result()
            except Exception as e:  # the task died (killed, out of memory, time-out): the next call resubmits it
                lines = str(e).strip().splitlines()
                status = {"state": "failed", "error": f"job {j.job_id}: {lines[-1] if lines else type(e).__name__}"}
            on_end(i, c, status)


__all__ = ["Interrupted", "InProcess", "LocalWorkers", "SlurmOptions", "Submitit"]
