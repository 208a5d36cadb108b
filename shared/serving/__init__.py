"""Serving: the one use case (classify, explain, combine), its caches, and the process's service."""
