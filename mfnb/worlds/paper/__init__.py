"""The `paper` world: the papers' hub models and datasets, served on GPUs, judged by LLMs (see README.md)."""
