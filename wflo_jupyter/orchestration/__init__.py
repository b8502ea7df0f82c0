"""Temporal: the cell workflow, its activities, and the in-kernel worker."""
