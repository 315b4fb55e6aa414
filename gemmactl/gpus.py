"""What we know about Cloud Run GPU types: minimum resources and the regions that offer them.

A small table kept by hand (dated below); Google adds regions over time, so an unknown region is a
warning in `doctor`, never a hard stop in `train`.
"""

from __future__ import annotations

from dataclasses import dataclass

AS_OF = "2026-11"


@dataclass(frozen=True)
class GpuType:
    name: str
    label: str
    memory_gib: int
    min_cpu: int
    min_memory_gib: int
    regions: frozenset[str]


GPUS: dict[str, GpuType] = {
    "nvidia-rtx-pro-6000": GpuType(
        name="nvidia-rtx-pro-6000",
        label="NVIDIA RTX PRO 6000 Blackwell (96 GB)",
        memory_gib=96,
        min_cpu=20,
        min_memory_gib=80,
        regions=frozenset({"us-central1", "europe-west4", "asia-southeast1", "asia-south2"}),
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
    ),
}


def region_offers(gpu_type: str, region: str) -> bool:
    gpu = GPUS.get(gpu_type)
    return bool(gpu and region in gpu.regions)
