"""The sandbox's runtime image: its recipe (where it is, its hash, its pinned packages)."""
