# syntax=docker/dockerfile:1
# capo-operator image: a venv built in a full Python image, copied into a slim one.
# The final image has no compiler, no pip cache, no build tools and runs as UID 65532 with a
# read-only root filesystem (the only writable path it needs is /tmp, an emptyDir in Kubernetes).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
# Wheels for cryptography, aiohttp etc. are prebuilt; gcc is here only for a dependency without one.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY capo_operator ./capo_operator
RUN python -m venv /opt/capo \
    && /opt/capo/bin/pip install --upgrade pip \
    && /opt/capo/bin/pip wheel --wheel-dir /wheels . \
    && /opt/capo/bin/pip install --no-index --find-links /wheels capo-operator \
    && /opt/capo/bin/pip uninstall -y pip \
    && find /opt/capo -name '__pycache__' -prune -exec rm -rf {} + \
    && /opt/capo/bin/python -m compileall -q /opt/capo/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="capo-operator" \
      org.opencontainers.image.description="Keeps the IPs of deleted or evicted stateful pods reserved in Calico." \
      org.opencontainers.image.licenses="Apache-2.0"
# Bytecode was compiled at build time; nothing is written at run time (read-only root filesystem).
# MALLOC_MMAP_THRESHOLD_ (mallopt(3)): allocations of 128 KiB and more (API response bodies, TLS
# read buffers) get their own mappings, returned to the system when freed, instead of glibc's
# default, which raises this threshold after the first such free and then leaves the heap holding
# the freed space: 7-12 MB less RSS at 20,000 pods (docs/performance.md).
ENV TZ=UTC \
    MALLOC_MMAP_THRESHOLD_=131072 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/capo/bin:$PATH \
    HOME=/tmp
COPY --from=builder /opt/capo /opt/capo
USER 65532:65532
WORKDIR /tmp
EXPOSE 9443 8080 8081
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz on 8081.
ENTRYPOINT ["capo-operator"]
CMD ["run"]
