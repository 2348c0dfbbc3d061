# Dataflow worker image (the pipeline option sdk_container_image): Apache Beam's SDK image of the
# Beam version setup.py pins (BEAM_VERSION, passed as a build argument: this file pins no Beam
# version itself) with predaudit[pipeline] preinstalled, so workers start without pip-installing
# anything, and never install the sidecar's or the local tools' packages (aiohttp, uvloop, chDB).
#   docker build -f templates/worker.Dockerfile --build-arg BEAM_VERSION="$BEAM_VERSION" .
# (templates/cloudbuild.yaml builds it; templates/deploy_commands.sh reads BEAM_VERSION from setup.py)
ARG BEAM_VERSION
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}
ARG BEAM_VERSION

WORKDIR /opt/predaudit
COPY setup.py MANIFEST.in README.md ./
COPY schemas schemas
COPY transforms transforms
COPY pipelines pipelines
COPY sidecar sidecar

# The image's Beam satisfies setup.py's pin (same version), so pip keeps it; the check below
# fails the build if the two ever differ.
RUN pip install --no-cache-dir ".[pipeline]" \
    && python -c "import apache_beam, sys; v = apache_beam.__version__; sys.exit(0 if v == '${BEAM_VERSION}' else f'Beam {v} != setup.py {sys.argv[1]}')" "${BEAM_VERSION}" \
    && python -c "import importlib.util as u, sys; bad = [m for m in ('chdb', 'aiohttp', 'uvloop') if u.find_spec(m)]; sys.exit(f'worker image has {bad}' if bad else 0)"

# The Beam SDK image's own entrypoint (/opt/apache/beam/boot) starts the SDK harness.
