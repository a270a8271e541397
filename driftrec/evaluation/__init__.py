"""Offline evaluation: ranking metrics over the full catalogue, protocols and the evaluation job's pieces."""
