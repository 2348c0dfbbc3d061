# The serving sidecar (predaudit[sidecar]: aiohttp, uvloop, Pub/Sub client, prometheus-client;
# no apache-beam, river or chDB). Runs next to a model server in the same pod and listens on
# the pod's loopback; its disk spool belongs on a volume (SPOOL_DIR) that outlives the container.
#   docker build -f templates/sidecar.Dockerfile -t predaudit-sidecar .
FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.py MANIFEST.in README.md ./
COPY schemas schemas
COPY transforms transforms
COPY pipelines pipelines
COPY sidecar sidecar
RUN python -m venv /venv && /venv/bin/pip install --no-cache-dir ".[sidecar]" \
    && /venv/bin/python -c "import importlib.util as u, sys; bad = [m for m in ('apache_beam', 'river', 'chdb') if u.find_spec(m)]; sys.exit(f'sidecar image has {bad}' if bad else 0)"

FROM python:3.11-slim
COPY --from=build /venv /venv
# a fixed non-root user; the spool directory is writable by it
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin predaudit \
    && mkdir -p /var/spool/predaudit && chown predaudit /var/spool/predaudit
USER 10001
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1
VOLUME ["/var/spool/predaudit"]
EXPOSE 8089
HEALTHCHECK --interval=10s --timeout=3s CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8089/readyz', timeout=2)"]
ENTRYPOINT ["predaudit", "sidecar", "--spool-dir", "/var/spool/predaudit"]
