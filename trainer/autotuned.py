"""The Triton kernels inductor chose between configs by timing in this process, and the configs it passed over.

Inductor compiles most reduction kernels with one config. At a kernel's first launch it may compile a second one
with half the reduction block (when registers limit occupancy) and keep whichever ran faster. That choice is made
again in every process, from timings that other GPU work (the eval images encoding beside the compile) disturbs,
and it is not cached. On an H100 with torch 2.11, one of gemma-3-4b's kernels (the query/key RMSNorm backward fused
with the rotary backward) computes wrong gradients with its first config (XBLOCK 2, R0_BLOCK 256) and right ones
with the halved config (R0_BLOCK 128). In about one process in nine the wrong one timed faster, and the run
learned next to nothing (BENCHMARKS.md, twenty-first set). trainer.guard uses this module to put such a choice
right: each passed-over config is tried in turn, and kept only if the compiled step then computes the eager step's
gradients.

These are inductor internals (its loaded modules, a kernel's `compile_results` and `launchers`), measured with
torch 2.11. Where they are missing or differ there is nothing to try, and the run trains eagerly: torch 2.13 (the
image's) keeps only the chosen config after timing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Choice:
    """One kernel inductor chose a config for at run time: its name, its module's (several graphs may each hold a
    kernel of that name) and the kernel object."""

    name: str
    kernel: object
    module: str = ""

    def chosen(self) -> str:
        return str(self.kernel.launchers[0].config)


def choices() -> list[Choice]:
    """Every kernel loaded in this process that holds more than one compiled config (none without inductor)."""
    try:
        from torch._inductor.codecache import PyCodeCache
    except ImportError:
        return []
    found = []
    for module in list(getattr(PyCodeCache, "modules", [])):
        for name, kernel in list(vars(module).items()):
            results = getattr(kernel, "compile_results", None)
            if isinstance(results, list) and len(results) > 1 and getattr(kernel, "launchers", None):
                found.append(Choice(name, kernel, Path(getattr(module, "__file__", "") or "").stem))
    return found


def try_others(choice: Choice, accept: Callable[[], T | None]) -> tuple[str, T] | None:
    """Launch `choice`'s kernel with each config inductor passed over, in turn, until `accept()` returns something:
    (that config, kept; what accept returned), or None with the chosen config back in place."""
    kernel = choice.kernel
    chosen = kernel.launchers
    for result in kernel.compile_results:
        if str(result.config) == str(chosen[0].config):
            continue
        try:
            kernel.launchers = [result.make_launcher()]
        except Exception:  # noqa: BLE001 -- a config that cannot load is no candidate
            continue
        if (accepted := accept()) is not None:
            return str(result.config), accepted
    kernel.launchers = chosen
    return None
