# userpilot-relay image: one process (uvicorn app.main:app) on port 8000, non-root,
# read-only root filesystem; the SQLite queue lives in the mounted /data volume.
#
# Build arguments (docs/deploy.md): PYTHON_IMAGE (a Debian-based Python 3.11+ image whose
# python3 runs `-m venv`), PIP_INDEX_URL (a package index other than PyPI), UID; and the build
# secret `pip_ca`, a CA bundle for pip behind a TLS-intercepting proxy
# (`--secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt`).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with the dependencies, then the application code -------------------
FROM ${PYTHON_IMAGE} AS build

ARG PIP_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# `python3` and absolute paths: the official image and a Debian base (/usr/bin/python3) alike.
RUN python3 -m venv /opt/venv

WORKDIR /src

# Dependencies in their own layer: it is rebuilt only when pyproject.toml or constraints.txt
# changes. The runtime dependencies (not the dev tools) at the versions in constraints.txt, the
# pins the test suite last passed with (scripts/setup installs the same; scripts/refresh-constraints
# moves them): the image runs what was tested, not whatever satisfies pyproject's lower bounds.
# pip and setuptools leave the virtualenv afterwards: the runtime stage ships neither.
COPY pyproject.toml constraints.txt ./
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && if [ -n "${PIP_INDEX_URL:-}" ]; then export PIP_INDEX_URL; else unset PIP_INDEX_URL; fi \
 && /opt/venv/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && /opt/venv/bin/python -m pip install --no-cache-dir -c constraints.txt -r requirements.txt \
 && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools

COPY app/ /app/app/
# Bytecode compiled at build time, for the application and the virtualenv: nothing is written
# under the read-only root at run time. checked-hash .pyc files stay valid after `COPY --from`
# (timestamp-based ones go stale with the files' times and every start would recompile them).
RUN /opt/venv/bin/python -m compileall -q -f --invalidation-mode checked-hash /app/app /opt/venv/lib

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG UID=10001
RUN groupadd --system --gid ${UID} relay \
 && useradd --system --uid ${UID} --gid relay --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin relay \
 && mkdir -p /data \
 && chown ${UID}:${UID} /data

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_DATABASE_URL=sqlite:////data/relay.db

WORKDIR /app
VOLUME ["/data"]
EXPOSE 8000
USER ${UID}:${UID}

HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]

# Exec form: uvicorn is PID 1 and receives SIGTERM itself; it stops accepting connections,
# finishes in-flight requests (up to the graceful timeout) and runs the app's lifespan shutdown.
# `docker run` and compose kill after 10 s: give them --stop-timeout 30 (docs/deploy.md).
STOPSIGNAL SIGTERM
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "20", "--no-server-header"]
