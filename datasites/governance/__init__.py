"""What the operator decides with: requests read as data, the vetting of their code, every
change they would make, the projected privacy and compute cost, the operator's API and the
auto-approving watcher. Governance never imports the runtime: it reads plans, it never runs
them.
"""
