"""Test helpers for users and for netopt itself.

- `netopt.testing.strategies`: Hypothesis strategies for random valid networks and widths
  (needs hypothesis; torch-free).
- `netopt.testing.torch_checks`: equivalence checks between a torch model and its IR.
"""
