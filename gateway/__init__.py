"""pvgate gateway: the metered reverse proxy (the data plane) and the `pvgate` CLI."""
