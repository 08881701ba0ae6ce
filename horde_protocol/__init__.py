"""Wire models of the ComputeHorde protocol, shared by both agents; pure pydantic, no I/O."""
