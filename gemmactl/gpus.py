"""What we know about Cloud Run GPU types: minimum resources and the regions that offer them.

A small table kept by hand (dated below); Google adds regions over time, so an unknown region is a
warning in `doctor`, never a hard stop in `train`.
"""

from __future__ import annotations

from dataclasses import dataclass

AS_OF = "2026-11"

# CUDA of the trainer image (Dockerfile base, and PyPI's torch 2.13.0 build): the host driver must support it.
IMAGE_CUDA = (13, 0)


@dataclass(frozen=True)
class GpuType:
    name: str
    label: str
    memory_gib: int
    min_cpu: int
    min_memory_gib: int
    regions: frozenset[str]
    driver_cuda: tuple[int, int]  # the newest CUDA the pre-installed Cloud Run driver supports


GPUS: dict[str, GpuType] = {
    "nvidia-rtx-pro-6000": GpuType(
        name="nvidia-rtx-pro-6000",
        label="NVIDIA RTX PRO 6000 Blackwell (96 GB)",
        memory_gib=96,
        min_cpu=20,
        min_memory_gib=80,
        regions=frozenset({"us-central1", "europe-west4", "asia-southeast1", "asia-south2"}),
        driver_cuda=(13, 0),  # driver 580.x (Cloud Run "Configure GPUs for jobs" page)
    ),
    "nvidia-l4": GpuType(
        name="nvidia-l4",
        label="NVIDIA L4 (24 GB)",
        memory_gib=24,
        min_cpu=4,
        min_memory_gib=16,
        regions=frozenset(
            {
                "us-central1",
                "us-east4",
                "europe-west1",
                "europe-west4",
                "asia-southeast1",
                "asia-south1",
            }
        ),
        driver_cuda=(12, 2),  # driver 535.216.03 (same page)
    ),
}


def region_offers(gpu_type: str, region: str) -> bool:
    gpu = GPUS.get(gpu_type)
    return bool(gpu and region in gpu.regions)


def image_cuda_problem(gpu_type: str) -> str | None:
    """Why the default trainer image cannot run on this GPU's Cloud Run driver, or None."""
    gpu = GPUS.get(gpu_type)
    if gpu is None or gpu.driver_cuda >= IMAGE_CUDA:
        return None
    have, need = ".".join(map(str, gpu.driver_cuda)), ".".join(map(str, IMAGE_CUDA))
    return f"Cloud Run's {gpu_type} driver supports CUDA {have}, but the trainer image is built for CUDA {need}"
