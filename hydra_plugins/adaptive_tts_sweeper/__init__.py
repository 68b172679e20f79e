"""The interleaved sweeper: a Hydra plugin (Hydra finds plugins in the ``hydra_plugins`` namespace)."""
