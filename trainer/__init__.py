"""trainer: fine-tune and evaluate Gemma 3 / Gemma 4 VLMs on Oxford-IIIT Pet (runs in the container)."""
