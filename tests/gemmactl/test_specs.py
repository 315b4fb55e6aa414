"""Golden tests of the pure job builders: every flag of the seed recipe's `gcloud beta run jobs create` has its
field, and the YAML / gcloud renderings stay exactly as reviewed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
import yaml

from gemmactl import pricing, specs
from gemmactl.cloud.ports import JobSpec, SecretEnv
from gemmactl.errors import ConfigError
from gemmactl.settings import Settings
from trainer.config import TrainConfig

IMAGE = "europe-west4-docker.pkg.dev/my-project/gemma-finetuning/gemma-finetune:abc123def456"
BUCKET = "my-project-gemma-finetuning-europe-west4"


def _settings(**changes) -> Settings:
    base = Settings(project="my-project", network="default", subnet="default", vpc_egress="private-ranges-only")
    return replace(base, **changes)


@pytest.fixture
def spec() -> JobSpec:
    return specs.build_job_spec(_settings(), IMAGE)


def test_every_flag_of_the_seed_recipe_has_its_field(spec):
    # Seed step 4: gcloud beta run jobs create $JOB_NAME ... (flag → field)
    assert spec.name == "gemma-finetuning-job"  # $JOB_NAME
    assert spec.region == "europe-west4"  # --region
    assert spec.image == IMAGE  # --image
    assert spec.env == {"BUCKET_NAME": BUCKET}  # --set-env-vars BUCKET_NAME=$BUCKET_NAME
    assert spec.secret_env == {"HF_TOKEN": SecretEnv("HF_TOKEN", "latest")}  # --set-secrets HF_TOKEN=$SECRET_ID:latest
    assert spec.gpu_zonal_redundancy_disabled is True  # --no-gpu-zonal-redundancy
    assert (spec.cpu, spec.memory) == ("20", "80Gi")  # --cpu 20.0 --memory 80Gi
    assert spec.timeout_s == 360 * 60  # --task-timeout 360m
    assert (spec.gpu_count, spec.gpu_type) == (1, "nvidia-rtx-pro-6000")  # --gpu 1 --gpu-type
    assert spec.service_account == "finetune-gemma-job-sa@my-project.iam.gserviceaccount.com"  # --service-account
    assert (spec.bucket, spec.mount_path) == (BUCKET, "/mnt/gcs")  # --add-volume(-mount) cloud-storage at /mnt/gcs
    assert (spec.network, spec.subnet, spec.vpc_egress) == ("default", "default", "private-ranges-only")
    # G4 README (anchors §1.15): --max-retries 3 and --labels; launch stage BETA for the Preview GPU.
    assert spec.max_retries == 3 and spec.labels == {"managed-by": "gemmactl"} and spec.launch_stage == "BETA"
    assert spec.args == ()  # per-run args go in the execution's overrides, never in the job


GOLDEN_YAML = f"""\
name: gemma-finetuning-job
location: europe-west4
labels:
  managed-by: gemmactl
launchStage: BETA
template:
  taskCount: 1
  template:
    containers:
    - name: trainer
      image: {IMAGE}
      resources:
        limits:
          cpu: '20'
          memory: 80Gi
          nvidia.com/gpu: '1'
      env:
      - name: BUCKET_NAME
        value: {BUCKET}
      - name: HF_TOKEN
        valueSource:
          secretKeyRef:
            secret: HF_TOKEN
            version: latest
      volumeMounts:
      - name: model-volume
        mountPath: /mnt/gcs
    timeout: 21600s
    maxRetries: 3
    serviceAccount: finetune-gemma-job-sa@my-project.iam.gserviceaccount.com
    nodeSelector:
      accelerator: nvidia-rtx-pro-6000
    gpuZonalRedundancyDisabled: true
    volumes:
    - name: model-volume
      gcs:
        bucket: {BUCKET}
        readOnly: false
    vpcAccess:
      networkInterfaces:
      - network: default
        subnetwork: default
      egress: PRIVATE_RANGES_ONLY
"""


def test_job_yaml_golden(spec):
    assert specs.job_spec_yaml(spec) == GOLDEN_YAML
    assert yaml.safe_load(GOLDEN_YAML) == specs.job_resource(spec)


GOLDEN_GCLOUD = f"""\
gcloud beta run jobs deploy gemma-finetuning-job \\
  --region europe-west4 \\
  --image {IMAGE} \\
  --set-env-vars BUCKET_NAME={BUCKET} \\
  --set-secrets HF_TOKEN=HF_TOKEN:latest \\
  --gpu 1 \\
  --gpu-type nvidia-rtx-pro-6000 \\
  --no-gpu-zonal-redundancy \\
  --cpu 20 \\
  --memory 80Gi \\
  --task-timeout 21600s \\
  --max-retries 3 \\
  --service-account finetune-gemma-job-sa@my-project.iam.gserviceaccount.com \\
  --add-volume name=model-volume,type=cloud-storage,bucket={BUCKET} \\
  --add-volume-mount volume=model-volume,mount-path=/mnt/gcs \\
  --network default \\
  --subnet default \\
  --vpc-egress private-ranges-only \\
  --labels managed-by=gemmactl

gcloud beta run jobs execute gemma-finetuning-job \\
  --region europe-west4 \\
  --async \\
  --args=--config,/mnt/gcs/runs/r1/config.json,--output-dir,/mnt/gcs/runs/r1,--eval-size,200,--learning-rate,5e-05 \\
  --update-env-vars RUN_ID=r1"""


def test_gcloud_command_golden(spec):
    config = TrainConfig(train_size=1000, eval_size=200, learning_rate=5e-5)
    overrides = specs.build_run_overrides(_settings(), config, "r1")
    assert specs.gcloud_command(spec, overrides) == GOLDEN_GCLOUD
    assert specs.gcloud_command(spec) == GOLDEN_GCLOUD.split("\n\n")[0]


def test_run_overrides_put_the_output_under_the_run_and_the_config_first():
    config = TrainConfig(model_id="/mnt/gcs/google/gemma-3-27b-it", train_size=700, quantization="4bit", merge=True)
    overrides = specs.build_run_overrides(_settings(), config, "pets-27b")
    assert overrides.args[:2] == ("--config", "/mnt/gcs/runs/pets-27b/config.json")
    args = overrides.args[2:]
    assert TrainConfig.from_args(list(args)) == config.replace(output_dir="/mnt/gcs/runs/pets-27b")
    assert "--merge" in args and overrides.env == {"RUN_ID": "pets-27b"} and overrides.container_name == "trainer"


def test_minimal_settings_omit_the_network_and_keep_l4_minimums():
    spec = specs.build_job_spec(Settings(project="my-project", gpu_type="nvidia-l4", cpu="4", memory="16Gi"), IMAGE)
    body = specs.job_resource(spec)["template"]["template"]
    assert "vpcAccess" not in body and body["nodeSelector"] == {"accelerator": "nvidia-l4"}
    assert "--network" not in specs.gcloud_command(spec)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cpu": "8"}, "--cpu 8 is below the nvidia-rtx-pro-6000 minimum of 20 vCPU"),
        ({"memory": "64Gi"}, "--memory 64Gi is below the nvidia-rtx-pro-6000 minimum of 80Gi"),
        ({"memory": "81920Mi", "cpu": "20"}, None),
        ({"task_timeout": "169h"}, "outside 1m..168h"),
        ({"task_timeout": "30s"}, "outside 1m..168h"),
        ({"network": None, "subnet": None}, "--vpc-egress needs --network"),
    ],
)
def test_resource_and_network_checks(changes, message):
    if message is None:
        specs.build_job_spec(_settings(**changes), IMAGE)
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        specs.build_job_spec(_settings(**changes), IMAGE)


def test_run_ids():
    assert specs.new_run_id(datetime(2026, 11, 20, 14, 30, 15, tzinfo=UTC), "a1b2") == "20261120-143015-a1b2"
    assert specs.check_run_id(specs.new_run_id()) and specs.check_run_id("pets-r16")
    for bad in ("Pets", "-x", "a_b", "x" * 64, ""):
        with pytest.raises(ConfigError):
            specs.check_run_id(bad)


def test_cost_estimate_for_the_timeout(spec):
    est = pricing.estimate(spec)
    gpu = pricing.GPU_PRICES["nvidia-rtx-pro-6000"].no_zonal_redundancy
    per_s = gpu + 20 * pricing.CPU_PER_S + 80 * pricing.MEMORY_PER_GIB_S
    assert est.total == pytest.approx(per_s * 6 * 3600)
    assert est.worst_case == pytest.approx(est.total * 4) and est.as_of == pricing.AS_OF
    assert est.source == "table (unverified GPU price)"
    redundant = pricing.estimate(replace(spec, gpu_zonal_redundancy_disabled=False))
    assert redundant.gpu_per_hour > est.gpu_per_hour
    l4 = pricing.estimate(replace(spec, gpu_type="nvidia-l4", cpu="4", memory="16Gi", timeout_s=3600))
    assert l4.gpu_per_hour == pytest.approx(0.672, abs=0.001) and l4.source == "table"
    assert pricing.estimate(spec, price_per_hour=3.0).total == pytest.approx(18.0)


@pytest.mark.parametrize("text", ["abc", "-1"])
def test_bad_price_override(text):
    with pytest.raises(ConfigError, match="GEMMACTL_PRICE_PER_HOUR"):
        pricing.parse_price(text)
    assert pricing.parse_price(None) is None and pricing.parse_price("4.5") == 4.5
