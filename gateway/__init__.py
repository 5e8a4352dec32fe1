"""pvgate gateway: the metered reverse proxy (the data plane) and the `pvgate` CLI."""

# Before any of gateway's compiled modules is imported (metering/build.py).
import metering.build  # noqa: F401
