"""s3: Synthesis Step by Step (Wang, Zhou & Sachan, EMNLP 2023 Findings) as a Hydra + W&B harness."""
