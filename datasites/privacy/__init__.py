"""Differential privacy as plain mechanisms and maths, with no knowledge of syft.

DP-SGD (`dp`) on fixed-size Poisson batches (`sampling`), the ChaCha20 stream its sampling
and noise come from (`stream`), noise that leaks nothing through its representation
(`noise`), privacy events and their composition (`accounting`), a study's calibrated budget
(`budget`), noised evaluation releases (`evaluation`) and the per-dataset budget ledger
(`ledger`).
"""
