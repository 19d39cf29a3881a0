# gpuaudit: one image for both gpuaudit-agent (DaemonSet) and gpuaudit-collector (StatefulSet).
#
#   docker build -t gpuaudit:0.1.0 .
#
# Stage 1 builds the gpuaudit wheel from the source tree and installs that wheel (and its
# dependencies, as pyproject.toml bounds them) into a virtual environment at /opt/gpuaudit.
# Stage 2 is the same base with that environment copied in: no source tree, no build tools,
# no pip cache. The base is pinned to an exact Python and Debian release; pin its digest too
# (BASE=python:3.12.8-slim-bookworm@sha256:...) where your registry policy asks for it.
ARG BASE=python:3.12.8-slim-bookworm

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY collector ./collector
COPY attestation ./attestation
COPY core ./core
COPY demo ./demo
# Only the built wheel goes into the environment, never the source tree.
RUN pip wheel --no-deps --wheel-dir /dist . \
    && python -m venv /opt/gpuaudit \
    && /opt/gpuaudit/bin/pip install /dist/gpuaudit-*.whl \
    && /opt/gpuaudit/bin/gpuaudit-collector --version \
    && /opt/gpuaudit/bin/gpuaudit-agent --version

FROM ${BASE}
LABEL org.opencontainers.image.title="gpuaudit" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.description="gpuaudit agent and collector: signed GPU usage statements"
# A fixed non-root user (65532, as in the collector's StatefulSet). The agent's DaemonSet runs
# the same image as root, which it needs to read other users' /proc/<pid>/environ.
RUN groupadd --system --gid 65532 gpuaudit \
    && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/gpuaudit --no-create-home \
       --shell /usr/sbin/nologin gpuaudit
COPY --from=build /opt/gpuaudit /opt/gpuaudit
ENV PATH=/opt/gpuaudit/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
WORKDIR /var/lib/gpuaudit
CMD ["gpuaudit-collector", "--help"]
