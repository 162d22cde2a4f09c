"""Evaluation: scoring labels by prediction and against ground truth."""
