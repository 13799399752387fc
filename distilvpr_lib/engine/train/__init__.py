"""Training: the epoch loop, objectives, optimiser, seeding, devices, checkpoints, TensorBoard, torch.distributed."""
