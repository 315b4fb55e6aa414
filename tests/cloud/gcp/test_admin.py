"""IAM, Resource Manager, Service Usage and Artifact Registry adapters: the requests `init` makes."""

from __future__ import annotations

import pytest

from gemmactl import errors
from gemmactl.cloud import ports

SA_EMAIL = "finetune-gemma-job-sa@test-project.iam.gserviceaccount.com"
APIS = [
    "run.googleapis.com", "artifactregistry.googleapis.com", "cloudbuild.googleapis.com",
    "secretmanager.googleapis.com", "storage.googleapis.com", "iam.googleapis.com", "logging.googleapis.com",
    "compute.googleapis.com", "cloudresourcemanager.googleapis.com",
]


def test_service_account_is_created_over_the_iam_rest_api(cloud, google):
    with pytest.raises(errors.NotFoundError, match=SA_EMAIL):
        cloud.iam.get_service_account(SA_EMAIL)

    sa = cloud.iam.create_service_account("finetune-gemma-job-sa", display_name="Gemma fine-tuning",
                                          description="Runs gemmactl jobs")

    assert sa == ports.ServiceAccountInfo(SA_EMAIL, "finetune-gemma-job-sa", "Gemma fine-tuning")
    (req,) = google.find("POST", "/serviceAccounts$")
    assert req.path == "/v1/projects/test-project/serviceAccounts"
    assert req.body == {"accountId": "finetune-gemma-job-sa",
                        "serviceAccount": {"displayName": "Gemma fine-tuning", "description": "Runs gemmactl jobs"}}
    assert cloud.iam.get_service_account(SA_EMAIL).email == SA_EMAIL
    assert google.find("GET")[-1].path == f"/v1/projects/test-project/serviceAccounts/{SA_EMAIL}"
    with pytest.raises(errors.AlreadyExistsError):
        cloud.iam.create_service_account("finetune-gemma-job-sa", display_name="x", description="y")


def test_project_policy_keeps_unknown_fields_and_adds_one_binding(cloud, google):
    audit = [{"service": "allServices", "auditLogConfigs": [{"logType": "DATA_READ"}]}]
    google.state.policies["projects/test-project"] = {
        "version": 3, "etag": "BwYA", "auditConfigs": audit,
        "bindings": [{"role": "roles/owner", "members": ["user:me@example.com"]}]}
    member = f"serviceAccount:{SA_EMAIL}"

    policy = cloud.iam.get_project_policy()
    cloud.iam.set_project_policy(policy.with_member("roles/logging.logWriter", member))

    assert google.find("POST", ":getIamPolicy$")[0].body == {"options": {"requestedPolicyVersion": 3}}
    (req,) = google.find("POST", ":setIamPolicy$")
    assert req.path == "/v3/projects/test-project:setIamPolicy"
    sent = req.body["policy"]
    # kept intact (the REST transport sends enums as ints: DATA_READ is 3)
    assert sent["etag"] == "BwYA"
    assert sent["auditConfigs"] == [{"service": "allServices", "auditLogConfigs": [{"logType": 3}]}]
    assert sorted(sent["bindings"], key=lambda b: b["role"]) == [
        {"role": "roles/logging.logWriter", "members": [member]},
        {"role": "roles/owner", "members": ["user:me@example.com"]},
    ]


def test_project_number_comes_from_resource_manager(cloud, google):
    assert cloud.services.get_project() == ports.ProjectInfo("test-project", "123456789012")
    assert google.find("GET")[0].path == "/v3/projects/test-project"


def test_enabled_apis_are_checked_in_one_batch_and_enabled_in_batches_of_twenty(cloud, google):
    google.state.services["run.googleapis.com"] = True
    state = cloud.services.enabled(APIS)
    assert state["run.googleapis.com"] and not state["iam.googleapis.com"]
    (get,) = google.find("GET", "services:batchGet$")
    assert get.query["names"] == [f"projects/test-project/services/{s}" for s in APIS]

    many = APIS + [f"api{i}.googleapis.com" for i in range(15)]
    cloud.services.enable(many)

    enables = google.find("POST", "services:batchEnable$")
    assert [r.body["serviceIds"] for r in enables] == [many[:20], many[20:]]
    assert enables[0].path == "/v1/projects/test-project/services:batchEnable"
    assert all(cloud.services.enabled(APIS).values())


def test_repository_create_waits_for_the_operation(cloud, google):
    with pytest.raises(errors.NotFoundError):
        cloud.registry.get_repository("europe-west4", "gemma-finetuning")

    repo = cloud.registry.create_repository("europe-west4", "gemma-finetuning", description="gemmactl images")

    assert repo == ports.RepositoryInfo("gemma-finetuning", "europe-west4", "DOCKER")
    (req,) = google.find("POST", "/repositories$")
    assert req.path == "/v1/projects/test-project/locations/europe-west4/repositories"
    assert req.query == {"repositoryId": "gemma-finetuning"}
    assert req.body["format"] == 1 and req.body["description"] == "gemmactl images"  # DOCKER
    assert cloud.registry.get_repository("europe-west4", "gemma-finetuning").format == "DOCKER"
    with pytest.raises(errors.AlreadyExistsError):
        cloud.registry.create_repository("europe-west4", "gemma-finetuning", description="")


def test_image_exists_looks_up_the_tag(cloud, google):
    image = "europe-west4-docker.pkg.dev/test-project/gemma-finetuning/gemma-finetune:abc123"
    assert cloud.registry.image_exists(image) is False
    google.state.tags.add(
        "projects/test-project/locations/europe-west4/repositories/gemma-finetuning/packages/gemma-finetune/tags/abc123")
    assert cloud.registry.image_exists(image) is True
    assert google.find("GET")[-1].path == (
        "/v1/projects/test-project/locations/europe-west4/repositories/gemma-finetuning/packages/gemma-finetune"
        "/tags/abc123")
    with pytest.raises(errors.UsageError):
        cloud.registry.image_exists("docker.io/library/ubuntu:24.04")
