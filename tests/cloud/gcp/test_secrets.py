"""Secret Manager adapter: the token travels only as the addVersion payload, stripped; IAM with etags."""

from __future__ import annotations

import base64
import json

import google_crc32c
import pytest

from gemmactl import errors
from gemmactl.cloud import ports

TOKEN = "hf_SuperSecretTokenValue123"
SA = "serviceAccount:finetune-gemma-job-sa@test-project.iam.gserviceaccount.com"


def test_create_secret_uses_automatic_replication(cloud, google):
    cloud.secrets.create_secret("HF_TOKEN", labels={"managed-by": "gemmactl"})

    (req,) = google.find("POST", r"/secrets$")
    assert req.path == "/v1/projects/test-project/secrets"
    assert req.query == {"secretId": "HF_TOKEN"}
    assert req.body == {"replication": {"automatic": {}}, "labels": {"managed-by": "gemmactl"}}
    with pytest.raises(errors.AlreadyExistsError, match="secret HF_TOKEN"):
        cloud.secrets.create_secret("HF_TOKEN", labels={})


def test_token_is_stripped_checksummed_and_appears_only_in_the_payload(cloud, google):
    cloud.secrets.create_secret("HF_TOKEN", labels={})
    assert cloud.secrets.latest_value("HF_TOKEN") is None  # no version yet

    version = cloud.secrets.add_version("HF_TOKEN", ports.SecretText(f"  {TOKEN}\n"))

    assert version == "1"
    (req,) = google.find("POST", ":addVersion$")
    assert req.path == "/v1/projects/test-project/secrets/HF_TOKEN:addVersion"
    assert req.body["payload"]["data"] == base64.b64encode(TOKEN.encode()).decode()
    assert int(req.body["payload"]["dataCrc32c"]) == google_crc32c.value(TOKEN.encode())
    assert cloud.secrets.latest_value("HF_TOKEN") == ports.SecretText(TOKEN)
    assert cloud.secrets.get_secret("HF_TOKEN").version_count == 1
    # Neither in plain text nor base64 anywhere but that one request body (and the access answer).
    encoded = base64.b64encode(TOKEN.encode()).decode()
    for r in google.requests:
        seen = r.path + json.dumps(r.query) + json.dumps(r.headers)
        assert TOKEN not in seen and encoded not in seen
        if r is not req:
            assert TOKEN not in r.raw.decode() and encoded not in r.raw.decode()


def test_missing_secret_and_bad_checksum(cloud, google):
    with pytest.raises(errors.NotFoundError, match="get secret HF_TOKEN"):
        cloud.secrets.get_secret("HF_TOKEN")
    assert cloud.secrets.latest_value("HF_TOKEN") is None

    cloud.secrets.create_secret("HF_TOKEN", labels={})
    cloud.secrets.add_version("HF_TOKEN", ports.SecretText(TOKEN))
    google.state.versions["projects/test-project/secrets/HF_TOKEN"][0]["payload"]["dataCrc32c"] = "1"
    with pytest.raises(errors.IntegrityError) as e:
        cloud.secrets.latest_value("HF_TOKEN")
    assert TOKEN not in str(e.value)


def test_disabled_latest_version_reads_as_none(cloud, google):
    cloud.secrets.create_secret("HF_TOKEN", labels={})
    google.fail("GET", "versions/latest:access", 400, "FAILED_PRECONDITION",
                "Secret Version [projects/123/secrets/HF_TOKEN/versions/1] is in DISABLED state.")
    assert cloud.secrets.latest_value("HF_TOKEN") is None


def test_empty_value_is_refused_before_any_request(cloud, google):
    with pytest.raises(errors.UsageError):
        cloud.secrets.add_version("HF_TOKEN", ports.SecretText(" \n"))
    assert google.requests == []


def test_policy_round_trip_keeps_etag_and_conditions(cloud, google):
    cloud.secrets.create_secret("HF_TOKEN", labels={})
    conditional = {"role": "roles/secretmanager.viewer", "members": ["user:a@example.com"],
                   "condition": {"title": "expires", "expression": "request.time < timestamp('2030-01-01T00:00:00Z')"}}
    google.state.policies["projects/test-project/secrets/HF_TOKEN"] = {
        "version": 3, "etag": "BwYA", "bindings": [conditional]}

    policy = cloud.secrets.get_policy("HF_TOKEN")
    assert policy.etag == "BwYA" and policy.bindings == ()
    cloud.secrets.set_policy("HF_TOKEN", policy.with_member("roles/secretmanager.secretAccessor", SA))

    assert google.find("GET", ":getIamPolicy$")[0].query == {"options.requestedPolicyVersion": "3"}
    (req,) = google.find("POST", ":setIamPolicy$")
    assert req.body["policy"]["etag"] == "BwYA" and req.body["policy"]["version"] == 3
    assert {"role": "roles/secretmanager.secretAccessor", "members": [SA]} in req.body["policy"]["bindings"]
    assert conditional in req.body["policy"]["bindings"]
    assert cloud.secrets.get_policy("HF_TOKEN").has("roles/secretmanager.secretAccessor", SA)


def test_etag_race_rereads_and_reapplies_only_our_addition(cloud, google):
    cloud.secrets.create_secret("HF_TOKEN", labels={})
    stale = cloud.secrets.get_policy("HF_TOKEN")
    # someone else writes in between: our etag is now stale
    google.state.policies["projects/test-project/secrets/HF_TOKEN"] = {
        "version": 1, "etag": "BwYB", "bindings": [{"role": "roles/owner", "members": ["user:b@example.com"]}]}

    result = cloud.secrets.set_policy("HF_TOKEN", stale.with_member("roles/secretmanager.secretAccessor", SA))

    sets = google.find("POST", ":setIamPolicy$")
    assert len(sets) == 2 and sets[1].body["policy"]["etag"] == "BwYB"
    assert result.has("roles/owner", "user:b@example.com")
    assert result.has("roles/secretmanager.secretAccessor", SA)


def test_new_service_account_propagation_is_waited_out(cloud, google, clock):
    cloud.secrets.create_secret("HF_TOKEN", labels={})
    google.fail("POST", ":setIamPolicy$", 400, "INVALID_ARGUMENT",
                f"Service account {SA[15:]} does not exist.", times=3)
    policy = cloud.secrets.get_policy("HF_TOKEN").with_member("roles/secretmanager.secretAccessor", SA)

    assert cloud.secrets.set_policy("HF_TOKEN", policy).has("roles/secretmanager.secretAccessor", SA)
    assert len(google.find("POST", ":setIamPolicy$")) == 4 and len(clock.slept) == 3


def test_propagation_wait_gives_up_after_about_a_minute(cloud, google, clock):
    cloud.secrets.create_secret("HF_TOKEN", labels={})
    google.fail("POST", ":setIamPolicy$", 400, "INVALID_ARGUMENT",
                f"Service account {SA[15:]} does not exist.", times=100)
    policy = ports.Policy().with_member("roles/secretmanager.secretAccessor", SA)
    with pytest.raises(errors.CloudError, match="does not exist"):
        cloud.secrets.set_policy("HF_TOKEN", policy)
    assert 60 <= sum(clock.slept) <= 120
