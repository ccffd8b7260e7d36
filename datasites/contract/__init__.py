"""The contract between a hospital and a scientist: what both sides must agree on.

The plan schema (`plan`), the model zoo (`zoo`), the feature encoding and its frozen
reference population (`encoding`, `ehr_reference`), the study code template (`template`) and
the evaluation release format (`release`). The scientist's library imports only this room,
so it imports no other room of `datasites`, and neither syft nor Opacus (checked in lint).
"""
