"""How any program reaches a datasite through syft's client: the operator's tools and the
scientist's library. Imports syft only inside its functions, and no room but the contract."""
