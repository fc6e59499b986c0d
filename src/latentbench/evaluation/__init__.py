"""Evaluation beyond the per-batch reconstruction metrics: FID/KID, embedding views, checkpoint eval."""
