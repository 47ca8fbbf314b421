# One image for every logagg process: the command picks the service
# (`docker run logagg ingest|consumer|migrate|publish|dlq`).
#
# Builds with BuildKit (Docker 23+, or DOCKER_BUILDKIT=1 on older engines) and its built-in
# Dockerfile frontend: no `# syntax=` line, which would pull a frontend image from a registry.
#
# logagg runs from its source tree (shared/paths.py reads schema/, sql/, shared/lua/ and
# services/ingest/static/ beside the packages), so the tree is copied to /app and installed in
# editable mode into a virtualenv; the runtime stage takes both at the same paths.

# Both stages use the same exact base tag (tests/deploy checks it).
FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that a code change reuses this layer.
# Every dependency ships manylinux wheels (psycopg[binary], hiredis, orjson): no compiler needed.
# Behind a TLS-inspecting proxy, pip needs its certificate authority: pass it as the build
# secret `pip_ca` (docker-compose.yml passes $PIP_CERT; `docker build --secret
# id=pip_ca,src=FILE`). A secret is mounted for this step only and stays out of every layer.
COPY pyproject.toml README.md ./
RUN --mount=type=secret,id=pip_ca,required=false \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install --no-cache-dir -r /tmp/requirements.txt

COPY schema/ schema/
COPY sql/ sql/
COPY shared/ shared/
COPY services/ services/
# Editable: the packages stay in /app next to the files they read. Bytecode is compiled here
# because the runtime user cannot write to /app.
# pip fetches the build backend (setuptools) here: the same secret.
RUN --mount=type=secret,id=pip_ca,required=false \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install --no-cache-dir --no-deps -e . \
    && python -m compileall -q /app/services /app/shared


FROM python:3.11.11-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 logagg \
    && useradd --system --uid 10001 --gid logagg --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin logagg
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
WORKDIR /app
USER 10001:10001

# ingest (INGEST_PORT) and a consumer's /metrics (METRICS_PORT).
EXPOSE 8080 9100

# Right for ingest; Compose overrides it for consumers (their /metrics on 9100) and turns it off
# for the one-shot migrate and publish containers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

ENTRYPOINT ["logagg"]
CMD ["ingest"]
