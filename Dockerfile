# One image for every AURA service; docker-compose.yml picks the process with its `command`
# (python -m services.ingest|signal|risk|executor|optimizer|console, services.optimizer.worker for the optimizer's
# workers, or `aura keygen` for the one-shot key job).
#
# Classic Dockerfile on purpose: no BuildKit features (no RUN --mount, no heredocs), so that podman/buildah
# and `DOCKER_BUILDKIT=0` build it the same as Docker does.

# --- stage 1: turn uv.lock into a pinned requirement list ------------------------------------------------
# Only pyproject.toml and uv.lock are copied here, so this stage and the dependency layer below are rebuilt
# only when the lock changes, never for a source edit.
FROM python:3.11-slim AS lock
# Keep in step with UV_VERSION in the Makefile: that uv wrote uv.lock.
ARG UV_VERSION=0.13.9
# Versions come from uv.lock alone: a pip constraints file named by a base image's pip config (some build
# hosts copy theirs in, with a path that does not exist in the image) must neither apply nor break the build.
ENV PIP_CONSTRAINT=/dev/null
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock ./
RUN uv export --frozen --no-dev --no-hashes --no-emit-project --no-header --output-file /requirements.txt

# --- stage 2: the runtime image ----------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/dev/null

# Unprivileged users with fixed uids in one group, so volume ownership is predictable across rebuilds: `aura`
# builds the kernel cache, and each service runs as its own user (docker-compose.yml `user:`), so a service can
# read its own key volume and no other service's.
RUN groupadd --system --gid 10001 aura \
    && useradd --system --uid 10001 --gid aura --home-dir /app --no-create-home --shell /usr/sbin/nologin aura \
    && for entry in ingest:10011 signal:10012 risk:10013 executor:10014 optimizer:10015 operator:10016 \
                    console:10017 worker:10018 admin:10019; do \
         useradd --system --uid "${entry#*:}" --gid aura --home-dir /app --no-create-home \
                 --shell /usr/sbin/nologin "aura-${entry%%:*}"; \
       done

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

# State lives under AURA_HOME. The directories that compose mounts named volumes on are created here, owned
# by the user that uses them, so a fresh volume inherits that ownership and mode (keygen, as root, hands
# each key volume over again on every start: `aura keygen --owner`).
# numba's cache=True needs a writable cache dir; site-packages is root-owned, so without this every
# `@njit(cache=True)` import fails for the service users ("no locator available"). Group-writable (setgid
# aura), so every service user can load and refresh it.
ENV AURA_HOME=/var/lib/aura \
    AURA_REPLAY_DIR=/app/data/replay \
    AURA_HEALTH_HOST=0.0.0.0 \
    NUMBA_CACHE_DIR=/var/cache/aura/numba
RUN mkdir -p /var/lib/aura/executor /var/lib/aura/cache /var/lib/aura/keys/public /var/cache/aura/numba /etc/nats \
    && for p in ingest signal risk executor optimizer operator console worker; do \
         mkdir -p "/var/lib/aura/keys/$p" && chown "aura-$p:aura" "/var/lib/aura/keys/$p" \
         && chmod 0700 "/var/lib/aura/keys/$p"; \
       done \
    && chown aura:aura /var/lib/aura && chown aura-executor:aura /var/lib/aura/executor \
    && chown aura-ingest:aura /var/lib/aura/cache \
    && chown aura:aura /var/cache/aura /var/cache/aura/numba && chmod 2775 /var/cache/aura/numba

USER aura:aura
# Compile the numba decision kernels into NUMBA_CACHE_DIR now, as the image user, so a container starts with
# a warm cache instead of compiling for tens of seconds at its first boot (aura/warmup.py); umask 002 keeps
# the cache files writable by the group every service user is in.
RUN umask 002 && python -m aura.warmup
EXPOSE 8100 8101 8102 8103 8104 8105
CMD ["aura", "--help"]
