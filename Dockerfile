# syntax=docker/dockerfile:1
# pvgate images (docs/architecture.md §9): multi-stage on slim Python 3.11; wheels are built
# in the first stage (the engine compiled there by mypyc, setup.py), so the images that run
# hold no compiler; they run as a non-root user with `pvgate` as the entrypoint.
#
#   docker build -t pvgate:0.1.0 .                            # full: pvgate[all], every command
#   docker build --target gateway -t pvgate:0.1.0-gateway .   # gateway: pvgate[gateway] only
#
#   docker run --rm pvgate:0.1.0 --help
#   docker run --rm -v "$PWD/gateway.toml:/etc/pvgate/gateway.toml:ro" -p 8080:8080 \
#       pvgate:0.1.0-gateway gateway --config /etc/pvgate/gateway.toml
#
# The gateway image lacks billing's packages (SQLAlchemy, Alembic, asyncpg, pydantic): it
# runs `pvgate gateway` and `pvgate balance` only.  The Helm chart (helm/pvgate) runs the
# full image everywhere unless gateway.image names the gateway one.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: wheels of pvgate and of everything it depends on ------------------------------
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY metering ./metering
COPY gateway ./gateway
COPY billing ./billing
COPY pvgate ./pvgate
# Every extra's wheels; each image below installs the ones of its extra from here.
RUN pip wheel --wheel-dir /wheels ".[all]"

# --- runtime: what both images share ------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/pvgate/bin:$PATH
RUN groupadd --system --gid 10001 pvgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/pvgate --create-home \
        --shell /usr/sbin/nologin pvgate \
    && python -m venv /opt/pvgate
# `pvgate demo` keeps its state here; in Kubernetes the root filesystem is read-only and
# only /tmp (an emptyDir) is written.
WORKDIR /home/pvgate
LABEL org.opencontainers.image.title="pvgate" \
      org.opencontainers.image.description="Page-view metering gateway" \
      org.opencontainers.image.licenses="Apache-2.0"

# --- gateway: the data plane alone --------------------------------------------------------
FROM runtime AS gateway
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "pvgate[gateway]" \
    && pip uninstall --yes pip
USER 10001:10001
EXPOSE 8080 9100
ENTRYPOINT ["pvgate"]
CMD ["--help"]

# --- full (the default): billing, migrations, `pvgate run` and the demo too ----------------
FROM runtime AS full
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "pvgate[all]" \
    && pip uninstall --yes pip
USER 10001:10001
EXPOSE 8080 8081 9100 9101
ENTRYPOINT ["pvgate"]
CMD ["--help"]
