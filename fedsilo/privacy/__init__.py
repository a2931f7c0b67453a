"""Parameter privacy: secure aggregation, record-level DP-SGD at the silos, central DP at the
coordinator. See "Privacy" in the README for the threat model and what each one costs."""
