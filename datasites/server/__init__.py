"""The syft datasite of one hospital: serving it, closing the syft surface it does not use,
patching syft's defects, auditing what scientists try, provisioning accounts and assets, and
keeping the identified source files that syft never sees.
"""
