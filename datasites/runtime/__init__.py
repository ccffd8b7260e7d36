"""The runtime an approved study calls inside the datasite: the only code that reads
private rows for training and evaluation. It never imports syft.

Approved code does `from datasites.runtime import execute`; that import line is part of the
study template (`datasites.contract.template`), so it stays exactly this.
"""

from datasites.runtime.execute import execute

__all__ = ["execute"]
