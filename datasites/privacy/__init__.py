"""Differential privacy as plain mechanisms and maths, with no knowledge of syft.

DP-SGD (`dp`), noise that leaks nothing through its representation (`noise`), privacy
events and their composition (`accounting`), a study's calibrated budget (`budget`), noised
evaluation releases (`evaluation`) and the per-dataset budget ledger (`ledger`).
"""
