"""Where each engine runs: ``WFLO_*`` settings, and the local stack launcher (``wflo up``)."""
