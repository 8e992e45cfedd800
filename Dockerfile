# syntax=docker/dockerfile:1
# patternstore: `docker build -t patternstore .` (see deploy/README.md).
# tests/test_deploy.py replays the two pip steps below in a fresh venv; keep them in step.

# --- stage 1: wheels for the project and every dependency -----------------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel is built from, so a change in tests/ or deploy/ keeps this layer.
COPY pyproject.toml README.md ./
COPY migrations/ migrations/
# server/patternstore_server/migrations is a symlink to ../../migrations: copied as a
# link, it resolves against the migrations/ above and the .sql files ship in the wheel.
COPY server/ server/
COPY client/ client/
RUN python -m pip wheel --wheel-dir /wheels .

# --- stage 2: a venv with the wheels installed, no compiler, no sources -----------------
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/patternstore/bin:$PATH
# --no-index: the image gets exactly the wheels stage 1 resolved, nothing fetched twice.
# The bind mount keeps /wheels out of every layer of the final image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/patternstore \
    && /opt/patternstore/bin/python -m pip install --no-index --find-links /wheels patternstore

# A fixed uid so a volume's ownership survives rebuilds; /data is created and chowned
# before VOLUME so a fresh named volume starts out writable by that user.
RUN groupadd --system --gid 10001 patternstore \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin patternstore \
    && mkdir /data \
    && chown 10001:10001 /data
VOLUME /data

# The server binds 127.0.0.1 by default; in a container it must listen on all interfaces.
# GRACE_S 8: SIGTERM lets calls finish for 8 s, then commits the queue and checkpoints,
# all inside the 10 s Docker waits before SIGKILL.
ENV PATTERNSTORE_LISTEN=0.0.0.0:50051 \
    PATTERNSTORE_METRICS_LISTEN=0.0.0.0:9464 \
    PATTERNSTORE_DATA_DIR=/data \
    PATTERNSTORE_GRACE_S=8 \
    PATTERNSTORE_TARGET=127.0.0.1:50051
EXPOSE 50051 9464

# Numeric, so runtimes (Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001
WORKDIR /data

# Readiness on the metrics port (/readyz: 200 only when serving and writes work; the gRPC
# health service says the same). Plain HTTP, so it keeps working when gRPC has TLS: the
# CLI's `health` would check the server's certificate against public CAs and fail. If
# you move or disable PATTERNSTORE_METRICS_LISTEN, override the healthcheck too.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9464/readyz', timeout=2)"]

# The server drains on SIGTERM; Python as PID 1 is fine because it installs that handler.
STOPSIGNAL SIGTERM
ENTRYPOINT ["patternstore-server"]
