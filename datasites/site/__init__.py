"""The hospital as a place: where its state lives, who it is and what it allows.

Paths of every state file (`paths`), its identity and secrets (`identity`), its site policy
(`policy`) and compute limits (`compute`), the audit log every other room writes to
(`audit`), the handle that opens them together (`hospital`) and the folder's permissions
(`permissions`). Imports only the contract and the privacy room.
"""
