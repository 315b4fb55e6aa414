"""ports.Jobs over Cloud Run Admin API v2 (REST): create-or-update the job, run it, follow and cancel executions."""

from __future__ import annotations

from typing import Any

from gemmactl import errors
from gemmactl.cloud import ports
from gemmactl.cloud.gcp import _run_convert as convert
from gemmactl.cloud.gcp._clients import GcpContext
from gemmactl.cloud.gcp._errors import call

APPLY_TIMEOUT_S = 600
_CONDITION_HINTS = {
    "SECRETS_ACCESS_CHECK_FAILED": "the job's service account cannot read the secret: run `gemmactl init`",
    "CONTAINER_MISSING": "the image does not exist yet: run `gemmactl build`",
    "CONTAINER_PERMISSION_DENIED": "Cloud Run cannot pull the image: check Artifact Registry access",
    "VPC_NETWORK_NOT_FOUND": "check --network/--subnet",
}


class CloudRunJobs:
    """One job per name and region; executions are its runs."""

    def __init__(self, ctx: GcpContext) -> None:
        self._ctx = ctx

    @property
    def _jobs(self) -> Any:
        from google.cloud import run_v2

        return self._ctx.gapic("RUN", run_v2.JobsClient)

    @property
    def _executions(self) -> Any:
        from google.cloud import run_v2

        return self._ctx.gapic("RUN", run_v2.ExecutionsClient)

    def _job_name(self, region: str, job: str) -> str:
        return f"projects/{self._ctx.project}/locations/{region}/jobs/{job}"

    def _execution_name(self, region: str, job: str, execution: str) -> str:
        if execution.startswith("projects/"):
            return execution
        return f"{self._job_name(region, job)}/executions/{execution}"

    def _call(self, what: str, fn: Any, *, retry: bool = True) -> Any:
        return call(what, fn, clock=self._ctx.clock, retry=retry)

    # ---------------------------------------------------------------- jobs

    def get_job(self, region: str, job: str) -> ports.JobInfo:
        found = self._call(
            f"get Cloud Run job {job} in {region}",
            lambda: self._jobs.get_job(name=self._job_name(region, job), retry=None),
        )
        return convert.job_info(found, region)

    def apply(self, spec: ports.JobSpec) -> tuple[ports.JobInfo, bool]:
        from google.cloud import run_v2

        what = f"deploy Cloud Run job {spec.name} in {spec.region}"
        request = run_v2.UpdateJobRequest(job=convert.build_job(spec, self._ctx.project), allow_missing=True)

        def update() -> Any:
            return self._jobs.update_job(request=request, retry=None).result(timeout=APPLY_TIMEOUT_S)

        # A PATCH of the full spec is idempotent, so a 5xx may be retried.
        job = self._call(what, update)
        if failure := convert.terminal_failure(job):
            reason, message = failure
            raise errors.CloudError(f"{what}: {reason}: {message}", hint=_CONDITION_HINTS.get(reason))
        # allow_missing creates the job at generation 1; every update bumps it.
        return convert.job_info(job, spec.region), int(job.generation) == 1

    # ---------------------------------------------------------------- executions

    def run(self, region: str, job: str, overrides: ports.RunOverrides) -> ports.Execution:
        from google.cloud import run_v2

        request = run_v2.RunJobRequest(
            name=self._job_name(region, job), overrides=convert.build_overrides(overrides)
        )
        # Never wait on op.result(): the operation lasts as long as the execution (hours).
        op = self._call(
            f"run Cloud Run job {job} in {region}",
            lambda: self._jobs.run_job(request=request, retry=None),
            retry=False,  # a retried POST would start a second, billed execution
        )
        metadata = op.metadata
        if metadata is None or not metadata.name:
            return self._find_started(region, job, overrides)
        return convert.execution_info(metadata, job)

    def _find_started(self, region: str, job: str, overrides: ports.RunOverrides) -> ports.Execution:
        """The execution a run started, when the operation did not name it (matched on RUN_ID)."""
        run_id = overrides.env.get("RUN_ID")
        for execution in self.list_executions(region, job, limit=5):
            if run_id is None or execution.run_id == run_id:
                return execution
        raise errors.CloudError(f"run Cloud Run job {job} in {region}: Cloud Run did not report the execution")

    def get_execution(self, region: str, job: str, execution: str) -> ports.Execution:
        found = self._call(
            f"get execution {execution} of job {job}",
            lambda: self._executions.get_execution(
                name=self._execution_name(region, job, execution), retry=None
            ),
        )
        return convert.execution_info(found, job)

    def list_executions(self, region: str, job: str, *, limit: int = 20) -> list[ports.Execution]:
        def first_page() -> list[Any]:
            pager = self._executions.list_executions(
                request={"parent": self._job_name(region, job), "page_size": limit}, retry=None
            )
            return list(pager.executions)

        found = self._call(f"list executions of job {job} in {region}", first_page)
        executions = [convert.execution_info(e, job) for e in found]
        executions.sort(key=lambda e: (e.create_time is not None, e.create_time), reverse=True)
        return executions[:limit]

    def cancel(self, region: str, job: str, execution: str) -> ports.Execution:
        name = self._execution_name(region, job, execution)
        op = self._call(
            f"cancel execution {execution} of job {job}",
            lambda: self._executions.cancel_execution(name=name, retry=None),
        )
        metadata = op.metadata
        if metadata is None or not metadata.name:
            return self.get_execution(region, job, execution)
        return convert.execution_info(metadata, job)
