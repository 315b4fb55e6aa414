"""gemmactl: fine-tune Gemma vision-language models on Cloud Run Jobs with serverless GPUs, or locally."""

__version__ = "0.1.0"
