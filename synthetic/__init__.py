"""Synthetic hospital data: EHR tables in the UCI Diabetes 130-US schema and
PathMNIST-like pathology images, plus partitioners that split data across hospitals."""
