# One image for every AURA service; docker-compose.yml picks the process with its `command`
# (python -m services.ingest|signal|risk|executor|optimizer, or `aura keygen` for the one-shot key job).
#
# Classic Dockerfile on purpose: no BuildKit features (no RUN --mount, no heredocs), so that podman/buildah
# and `DOCKER_BUILDKIT=0` build it the same as Docker does.

# --- stage 1: turn uv.lock into a pinned requirement list ------------------------------------------------
# Only pyproject.toml and uv.lock are copied here, so this stage and the dependency layer below are rebuilt
# only when the lock changes, never for a source edit.
FROM python:3.11-slim AS lock
# Keep in step with UV_VERSION in the Makefile: that uv wrote uv.lock.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock ./
RUN uv export --frozen --no-dev --no-hashes --no-emit-project --no-header --output-file /requirements.txt

# --- stage 2: the runtime image ----------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Unprivileged user with a fixed uid/gid, so volume ownership is predictable across rebuilds.
RUN groupadd --system --gid 10001 aura \
    && useradd --system --uid 10001 --gid aura --home-dir /app --no-create-home --shell /usr/sbin/nologin aura

# Third-party dependencies, exactly the versions in uv.lock (layer reused until the lock changes).
COPY --from=lock /requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt

# The project itself (packages aura, shared, services + console script `aura`), installed without
# touching the dependencies above. The source copy is removed afterwards: the code runs from
# site-packages only, so there is one copy of it in the image.
COPY pyproject.toml README.md /tmp/aura-src/
COPY aura /tmp/aura-src/aura
COPY shared /tmp/aura-src/shared
COPY services /tmp/aura-src/services
RUN pip install --no-cache-dir --no-deps /tmp/aura-src && rm -rf /tmp/aura-src

# Bundled candles the ingest service replays.
WORKDIR /app
COPY data /app/data

# State lives under AURA_HOME. The directories that compose mounts named volumes on are created here,
# owned by the service user, so a fresh volume inherits that ownership (and the private-key directory
# its 0700 mode).
# numba's cache=True needs a writable cache dir; site-packages is root-owned, so without this every
# `@njit(cache=True)` import fails for the service user ("no locator available").
ENV AURA_HOME=/var/lib/aura \
    AURA_REPLAY_DIR=/app/data/replay \
    AURA_HEALTH_HOST=0.0.0.0 \
    NUMBA_CACHE_DIR=/var/cache/aura/numba
RUN mkdir -p /var/lib/aura/executor /var/lib/aura/keys/private /var/lib/aura/keys/public /var/cache/aura/numba \
    && chmod 0700 /var/lib/aura/keys/private \
    && chown -R aura:aura /var/lib/aura /var/cache/aura

USER aura:aura
# Compile the numba decision kernels into NUMBA_CACHE_DIR now, as the service user, so a container starts
# with a warm cache instead of compiling for tens of seconds at its first boot (aura/warmup.py).
RUN python -m aura.warmup
EXPOSE 8101 8102 8103 8104 8105
CMD ["aura", "--help"]
