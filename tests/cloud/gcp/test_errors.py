"""Google's errors become ours, with the resource, the missing permission or the API to enable; endpoint
overrides, credentials and lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gemmactl import errors
from gemmactl.cloud.gcp import _clients, make_gcp_cloud
from gemmactl.settings import Settings

SECRET_PATH = r"/secrets/HF_TOKEN$"


def test_service_disabled_names_the_api_and_its_activation_url(cloud, google):
    url = "https://console.developers.google.com/apis/api/secretmanager.googleapis.com/overview?project=123"
    google.fail("GET", SECRET_PATH, 403, "PERMISSION_DENIED",
                "Secret Manager API has not been used in project 123 before or it is disabled.",
                reason="SERVICE_DISABLED",
                metadata={"service": "secretmanager.googleapis.com", "consumer": "projects/123", "activationUrl": url})

    with pytest.raises(errors.ServiceDisabledError) as e:
        cloud.secrets.get_secret("HF_TOKEN")

    assert e.value.service == "secretmanager.googleapis.com" and e.value.activation_url == url
    assert "get secret HF_TOKEN" in e.value.message and url in e.value.hint


def test_permission_denied_names_the_missing_permission(cloud, google):
    google.fail("PATCH", "/jobs/", 403, "PERMISSION_DENIED",
                "Permission 'run.jobs.update' denied on resource 'namespaces/test-project/jobs/j' (or it may not exist).",
                reason="IAM_PERMISSION_DENIED", metadata={"permission": "run.jobs.update"})
    from tests.cloud.gcp.test_jobs import _spec

    with pytest.raises(errors.PermissionDeniedError) as e:
        cloud.jobs.apply(_spec())
    assert e.value.permission == "run.jobs.update" and "run.jobs.update" in e.value.hint
    assert e.value.message.startswith("deploy Cloud Run job gemma-finetuning-job in europe-west4: Permission")
    assert "http://" not in e.value.message  # the REST URL prefix is noise


def test_permission_parsed_from_the_message_when_no_error_info(cloud, google):
    google.fail("GET", SECRET_PATH, 403, "PERMISSION_DENIED",
                "Permission 'secretmanager.secrets.get' denied for resource 'projects/test-project/secrets/HF_TOKEN'")
    with pytest.raises(errors.PermissionDeniedError) as e:
        cloud.secrets.get_secret("HF_TOKEN")
    assert e.value.permission == "secretmanager.secrets.get"


def test_missing_quota_project_is_a_credentials_problem(cloud, google):
    google.fail("GET", "services:batchGet", 403, "PERMISSION_DENIED",
                "Your application is authenticating by using local Application Default Credentials. The "
                "serviceusage.googleapis.com API requires a quota project, which is not set by default.")
    with pytest.raises(errors.CredentialsError) as e:
        cloud.services.enabled(["run.googleapis.com"])
    assert "GOOGLE_CLOUD_QUOTA_PROJECT" in e.value.hint


@pytest.mark.parametrize(
    ("code", "status", "message", "expected"),
    [
        (409, "ALREADY_EXISTS", "Resource already exists.", errors.AlreadyExistsError),
        (404, "NOT_FOUND", "Requested entity was not found.", errors.NotFoundError),
        (429, "RESOURCE_EXHAUSTED", "Rate exceeded.", errors.QuotaError),
        (400, "FAILED_PRECONDITION", "Quota violated: NvidiaRtxPro6000GpuAllocPerProjectRegion", errors.QuotaError),
        (400, "INVALID_ARGUMENT", "spec.template.spec.containers[0].resources.limits.memory: bad", errors.CloudError),
        (401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", errors.CredentialsError),
    ],
)
def test_status_codes_map_to_our_errors(cloud, google, code, status, message, expected):
    google.fail("GET", SECRET_PATH, code, status, message)
    with pytest.raises(expected) as e:
        cloud.secrets.get_secret("HF_TOKEN")
    assert "secret HF_TOKEN" in e.value.message


def test_server_errors_are_retried_then_reported_as_transient(cloud, google, clock):
    google.state.secrets["projects/test-project/secrets/HF_TOKEN"] = {"name": "projects/test-project/secrets/HF_TOKEN"}
    google.state.versions["projects/test-project/secrets/HF_TOKEN"] = []
    google.fail("GET", SECRET_PATH, 500, "INTERNAL", "Internal error encountered.", times=2)
    assert cloud.secrets.get_secret("HF_TOKEN").name == "HF_TOKEN"
    assert clock.slept == [1, 2]

    google.fail("GET", SECRET_PATH, 503, "UNAVAILABLE", "The service is currently unavailable.", times=10)
    with pytest.raises(errors.TransientError, match="get secret HF_TOKEN"):
        cloud.secrets.get_secret("HF_TOKEN")


def test_endpoint_overrides_take_gcloud_form():
    env = {"CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN": "http://127.0.0.1:8123/",
           "CLOUDSDK_API_ENDPOINT_OVERRIDES_IAM": "https://iam.example.com/",
           "STORAGE_EMULATOR_HOST": "http://localhost:9023"}
    assert _clients.endpoint_override("RUN", env) == "http://127.0.0.1:8123"
    assert _clients.endpoint_override("IAM", env) == "https://iam.example.com"
    assert _clients.endpoint_override("LOGGING", env) is None
    assert _clients.is_loopback(_clients.endpoint_override("RUN", env))
    assert _clients.is_loopback(_clients.endpoint_override("STORAGE", env))
    assert not _clients.is_loopback(_clients.endpoint_override("IAM", env))


def test_no_credentials_is_one_clear_error(monkeypatch):
    from google.auth.exceptions import DefaultCredentialsError

    def no_adc(*args, **kwargs):
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr("google.auth.default", no_adc)
    with pytest.raises(errors.CredentialsError) as e:
        make_gcp_cloud(Settings(project=None))
    assert "gcloud auth application-default login" in e.value.hint


def test_project_comes_from_adc_when_unset(monkeypatch):
    from google.auth.credentials import AnonymousCredentials

    monkeypatch.setattr("google.auth.default", lambda **kw: (AnonymousCredentials(), "adc-project"))
    assert make_gcp_cloud(Settings(project=None)).project == "adc-project"
    monkeypatch.setattr("google.auth.default", lambda **kw: (AnonymousCredentials(), None))
    with pytest.raises(errors.ConfigError, match="no Google Cloud project"):
        make_gcp_cloud(Settings(project=None))


def test_quota_project_is_honoured(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_QUOTA_PROJECT", "billing-project")
    ctx = _clients.GcpContext(project="p")
    assert ctx.client_options("RUN").quota_project_id == "billing-project"


def test_importing_the_cli_and_the_adapters_imports_no_google_module():
    code = "import gemmactl.cli.app, gemmactl.cloud.gcp"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    google_modules = [line for line in out.stderr.splitlines() if "google" in line.split("|")[-1]]
    assert google_modules == []


def test_without_overrides_clients_use_google_endpoints_and_adc(monkeypatch):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import run_v2

    adc = AnonymousCredentials()
    monkeypatch.setattr("google.auth.default", lambda **kw: (adc, "adc-project"))
    monkeypatch.setenv("GOOGLE_CLOUD_QUOTA_PROJECT", "billing-project")
    ctx = _clients.GcpContext(project="p")

    jobs = ctx.gapic("RUN", run_v2.JobsClient)
    assert jobs.transport.kind == "rest" and jobs.transport._host == "https://run.googleapis.com"
    assert ctx.storage()._connection.API_BASE_URL == "https://storage.googleapis.com"
    assert ctx.logging()._connection.API_BASE_URL == "https://logging.googleapis.com"
    assert ctx.base_url("IAM") == "https://iam.googleapis.com"
    assert ctx.session("IAM").headers["x-goog-user-project"] == "billing-project"
    assert ctx.credentials("RUN") is adc


@pytest.mark.parametrize(
    ("exc", "expected", "permission"),
    [
        ("Forbidden:x@y.iam.gserviceaccount.com does not have storage.objects.get access to the Google Cloud "
         "Storage object.", errors.PermissionDeniedError, "storage.objects.get"),
        ("Conflict:There were concurrent policy changes.", None, None),  # an etag race is retried, not "exists"
        ("PreconditionFailed:At least one of the pre-conditions you specified did not hold.", None, None),
        ("BadRequest:Service account a@b.iam.gserviceaccount.com does not exist.", errors.CloudError, None),
    ],
)
def test_translate_classifies_raw_google_exceptions(exc, expected, permission):
    from google.api_core import exceptions as gexc

    from gemmactl.cloud.gcp._errors import is_etag_race, translate

    kind, message = exc.split(":", 1)
    raised = getattr(gexc, kind)(message)
    if kind == "Conflict":
        raised = gexc.Aborted(message)  # what gRPC raises; REST carries status ABORTED in the body
    if expected is None:
        assert is_etag_race(raised)
        return
    err = translate(raised, "do the thing")
    assert type(err) is expected and err.message.startswith("do the thing: ")
    assert getattr(err, "permission", None) == permission
