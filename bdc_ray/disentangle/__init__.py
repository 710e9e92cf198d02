"""Disentangle (docs/method.md#disentangle-disenlora): embed the training examples, cluster them with faiss, train one
LoRA expert per cluster (plus `full`), and build merging baselines. Nothing here starts Ray; the
Ray Data / Ray Train wiring lives in jobs/disentangle.py and jobs/train_experts.py."""
