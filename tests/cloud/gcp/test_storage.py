"""Cloud Storage adapter against gcp-storage-emulator: buckets, IAM, objects, resumable uploads that only
appear on a clean finish."""

from __future__ import annotations

import uuid

import pytest

from gemmactl import errors

SA = "serviceAccount:finetune-gemma-job-sa@test-project.iam.gserviceaccount.com"


@pytest.fixture
def bucket(cloud) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"  # the emulator lives for the whole session
    cloud.storage.create_bucket(name, location="europe-west4", labels={"managed-by": "gemmactl"})
    return name


def test_create_bucket_sends_location_ubla_and_public_access_prevention(cloud, monkeypatch):
    from google.cloud.storage import Client

    sent = {}
    original = Client.create_bucket

    def spy(self, bucket_or_name, **kwargs):
        sent["location"] = kwargs.get("location")
        sent["properties"] = dict(bucket_or_name._properties)
        return original(self, bucket_or_name, **kwargs)

    monkeypatch.setattr(Client, "create_bucket", spy)
    name = f"b-{uuid.uuid4().hex[:12]}"
    info = cloud.storage.create_bucket(name, location="europe-west4", labels={"managed-by": "gemmactl"})

    assert info.name == name
    assert sent["location"] == "europe-west4"
    assert sent["properties"]["iamConfiguration"] == {
        "uniformBucketLevelAccess": {"enabled": True}, "publicAccessPrevention": "enforced"}
    assert sent["properties"]["labels"] == {"managed-by": "gemmactl"}


def test_bucket_conflict_tells_yours_from_someone_elses(cloud, bucket, monkeypatch):
    with pytest.raises(errors.AlreadyExistsError, match=f"gs://{bucket} already exists"):
        cloud.storage.create_bucket(bucket, location="europe-west4", labels={})

    from google.api_core import exceptions as gexc
    from google.cloud.storage import Client

    def forbidden(self, name, **kwargs):
        raise gexc.Forbidden("caller does not have storage.buckets.get access to the Google Cloud Storage bucket.")

    monkeypatch.setattr(Client, "get_bucket", forbidden)
    with pytest.raises(errors.PermissionDeniedError, match="belongs to someone else") as e:
        cloud.storage.create_bucket(bucket, location="europe-west4", labels={})
    assert "--bucket" in e.value.hint


def test_get_missing_bucket(cloud):
    with pytest.raises(errors.NotFoundError, match="gs://nope-"):
        cloud.storage.get_bucket(f"nope-{uuid.uuid4().hex[:8]}")


def test_bucket_policy_round_trip(cloud, bucket):
    policy = cloud.storage.get_bucket_policy(bucket)
    updated = cloud.storage.set_bucket_policy(bucket, policy.with_member("roles/storage.objectAdmin", SA))
    assert updated.has("roles/storage.objectAdmin", SA)
    assert cloud.storage.get_bucket_policy(bucket).has("roles/storage.objectAdmin", SA)


def test_objects_write_stat_list_read_from_offset_delete(cloud, bucket):
    cloud.storage.write_bytes(bucket, "runs/r1/config.json", b'{"a": 1}', content_type="application/json")
    cloud.storage.write_bytes(bucket, "runs/r2/config.json", b"{}")

    info = cloud.storage.stat(bucket, "runs/r1/config.json")
    assert info.size == 8 and info.md5_hash and info.generation
    assert cloud.storage.stat(bucket, "runs/r1/missing") is None
    assert [o.name for o in cloud.storage.list(bucket, "runs/")] == ["runs/r1/config.json", "runs/r2/config.json"]
    assert cloud.storage.read_bytes(bucket, "runs/r1/config.json") == b'{"a": 1}'
    assert cloud.storage.read_bytes(bucket, "runs/r1/config.json", start=6) == b"1}"
    assert cloud.storage.read_bytes(bucket, "runs/r1/config.json", start=8) == b""

    cloud.storage.delete(bucket, "runs/r1/config.json")
    with pytest.raises(errors.NotFoundError, match="config.json"):
        cloud.storage.read_bytes(bucket, "runs/r1/config.json")


def test_streaming_upload_appears_only_when_finished(cloud, bucket):
    chunk = b"x" * (1024 * 1024)
    with cloud.storage.open_writer(bucket, "models/w.bin", metadata={"sha256": "abc"}) as w:
        for _ in range(3):
            w.write(chunk)
        assert cloud.storage.stat(bucket, "models/w.bin") is None
    info = cloud.storage.stat(bucket, "models/w.bin")
    assert info.size == 3 * len(chunk) and info.metadata == {"sha256": "abc"}


def test_failed_streaming_upload_leaves_nothing(cloud, bucket, monkeypatch):
    from gemmactl.cloud.gcp import storage as gcs

    monkeypatch.setattr(gcs, "CHUNK_SIZE", 256 * 1024)  # so chunks really go out before the failure
    with pytest.raises(RuntimeError), cloud.storage.open_writer(bucket, "models/partial.bin") as w:
        w.write(b"y" * (600 * 1024))
        raise RuntimeError("network died")
    assert cloud.storage.stat(bucket, "models/partial.bin") is None
    assert cloud.storage.local_path(bucket) is None


def test_object_in_a_missing_bucket(cloud):
    with pytest.raises(errors.NotFoundError):
        cloud.storage.write_bytes(f"nope-{uuid.uuid4().hex[:8]}", "a", b"1")
