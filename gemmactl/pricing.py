"""A small, dated price table for Cloud Run jobs with a GPU, and the cost estimate `train --dry-run` prints.

Prices are USD per second, Tier-1 region (us-central1 / europe-west4 are Tier 1), on-demand, no committed-use
discount. Sources, read 2026-11 (the search index has no first-party Cloud Run pricing page with numbers):
- NVIDIA L4 and CPU / memory: Cloud Billing API SKUs for us-central1 as of 2026-08, quoted in a public
  deployment guide (L4 0.0001867 $/s without zonal redundancy = $0.672/h, 0.0002909 $/s with; instance-based
  vCPU 0.000018 $/s, memory 0.000002 $/GiB-s). https://cloud.google.com/run/pricing is the live source.
- NVIDIA RTX PRO 6000 Blackwell: UNVERIFIED ESTIMATE (Preview GPU; no published per-second price found).
  $4.00/h without zonal redundancy, scaled by the L4's with/without ratio (x1.558). Override it with
  GEMMACTL_PRICE_PER_HOUR (the whole instance, $/h) once you know your price.
"""

from __future__ import annotations

from dataclasses import dataclass

from gemmactl.cloud.ports import JobSpec
from gemmactl.errors import ConfigError

AS_OF = "2026-08"
PRICE_ENV = "GEMMACTL_PRICE_PER_HOUR"
CPU_PER_S = 0.000018  # per vCPU-second, instance-based billing (the only billing GPU instances allow)
MEMORY_PER_GIB_S = 0.000002


@dataclass(frozen=True)
class GpuPrice:
    no_zonal_redundancy: float  # $/s
    zonal_redundancy: float  # $/s
    verified: bool


GPU_PRICES: dict[str, GpuPrice] = {
    "nvidia-l4": GpuPrice(0.0001867, 0.0002909, verified=True),
    "nvidia-rtx-pro-6000": GpuPrice(4.00 / 3600, 4.00 / 3600 * 1.558, verified=False),
}


@dataclass(frozen=True)
class Estimate:
    """Cost of one attempt running for the whole task timeout (the most one attempt can bill)."""

    seconds: int
    per_hour: float
    gpu_per_hour: float
    cpu_per_hour: float
    memory_per_hour: float
    max_attempts: int
    as_of: str
    source: str  # "table" | "table (unverified GPU price)" | PRICE_ENV

    @property
    def total(self) -> float:
        return self.per_hour * self.seconds / 3600

    @property
    def worst_case(self) -> float:
        """Every retry also running to the timeout."""
        return self.total * self.max_attempts

    def as_dict(self) -> dict[str, object]:
        return {
            "timeout_s": self.seconds,
            "usd_per_hour": round(self.per_hour, 4),
            "usd_for_timeout": round(self.total, 2),
            "usd_worst_case_with_retries": round(self.worst_case, 2),
            "gpu_usd_per_hour": round(self.gpu_per_hour, 4),
            "cpu_usd_per_hour": round(self.cpu_per_hour, 4),
            "memory_usd_per_hour": round(self.memory_per_hour, 4),
            "prices_as_of": self.as_of,
            "source": self.source,
        }


def parse_price(text: str | None) -> float | None:
    """The GEMMACTL_PRICE_PER_HOUR value, or None when unset."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ConfigError(f"invalid {PRICE_ENV} '{text}'", hint="a price in USD per hour, e.g. 4.5")
    return value


def estimate(spec: JobSpec, *, price_per_hour: float | None = None) -> Estimate:
    """The estimate for `spec`'s timeout; `price_per_hour` (the whole instance) replaces the table."""
    from gemmactl.specs import memory_gib

    gpu = GPU_PRICES.get(spec.gpu_type or "")
    gpu_s = 0.0
    if gpu is not None:
        gpu_s = gpu.no_zonal_redundancy if spec.gpu_zonal_redundancy_disabled else gpu.zonal_redundancy
        gpu_s *= spec.gpu_count
    cpu_s = float(spec.cpu) * CPU_PER_S
    mem_s = memory_gib(spec.memory) * MEMORY_PER_GIB_S
    source = "table" if gpu is None or gpu.verified else "table (unverified GPU price)"
    per_hour = (gpu_s + cpu_s + mem_s) * 3600
    if price_per_hour is not None:
        per_hour, source = price_per_hour, PRICE_ENV
    return Estimate(
        seconds=spec.timeout_s,
        per_hour=per_hour,
        gpu_per_hour=gpu_s * 3600,
        cpu_per_hour=cpu_s * 3600,
        memory_per_hour=mem_s * 3600,
        max_attempts=spec.max_retries + 1,
        as_of=AS_OF,
        source=source,
    )
