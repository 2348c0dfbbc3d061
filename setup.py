"""predaudit: streaming prediction audit for ML platforms on Google Cloud.

The Beam pin below is the single source of the Beam version: the worker image
(templates/worker.Dockerfile, Beam's SDK image of this version + predaudit[pipeline])
and the launcher built on it take it as a build argument read from this file.
"""

from setuptools import find_packages, setup

BEAM_VERSION = "2.77.0"

# What the sidecar and the pipeline both import (schemas/: the contract decoder, specs).
INSTALL_REQUIRES = [
    "msgspec>=0.19",
    "orjson>=3.10",
    "PyYAML>=6.0",
]

# pip install 'predaudit[sidecar]': the serving sidecar and client library, no Beam/river/chDB
# (templates/sidecar.Dockerfile; tests/unit/test_sidecar_slim.py)
SIDECAR_REQUIRES = [
    "aiohttp>=3.9",
    "prometheus-client>=0.20",
    "cloudevents>=1.11,<2",
    "uvloop>=0.19; sys_platform != 'win32'",  # the sidecar's event loop (asyncio's otherwise)
    "google-cloud-pubsub>=2.20",
]

# pip install 'predaudit[pipeline]': what Dataflow workers run (templates/worker.Dockerfile)
PIPELINE_REQUIRES = [
    f"apache-beam[gcp]=={BEAM_VERSION}",
    "google-cloud-pubsub>=2.20",
    "google-cloud-bigquery>=3.20",
    "google-cloud-secret-manager>=2.20,<3",  # --pii_key_secret, --clickhouse_password_secret
    "clickhouse-connect>=1.12",
    "numpy>=1.26",
    "river>=0.22",
    "scipy>=1.11",  # transforms/monitors/calibrate.py (chi-square and normal quantiles)
]

# local runs, make demo and the tests: embedded ClickHouse (chdb:// DSNs), never on workers
LOCAL_REQUIRES = ["clickhouse-connect[chdb]>=1.12"]

DEV_REQUIRES = [
    *PIPELINE_REQUIRES,
    *SIDECAR_REQUIRES,
    *LOCAL_REQUIRES,
    "pytest>=8",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "ruff>=0.6",
    "jsonschema>=4.22",
    "rfc3339-validator>=0.1.4",
    "bqemulator==1.4.0",
    "duckdb==1.5.5",
    "duckdb-extension-spatial==1.5.5",
    "duckdb-extensions==1.5.5",
    "mutmut==3.8.1",  # make mutate (tools/mutate.py)
    # make lint: tools/lint_infra.py (checkov has its own virtualenv, see the Makefile)
    "check-jsonschema==0.39.0",
    "zizmor==1.32.0",
    "python-hcl2==8.1.4",
]

setup(
    name="predaudit",
    version="0.1.0",
    description="Streaming prediction-audit pipeline: Pub/Sub -> Beam -> BigQuery/ClickHouse + drift monitors",
    python_requires=">=3.10",
    packages=find_packages(include=["schemas*", "transforms*", "pipelines*", "sidecar*"]),
    package_data={"schemas": ["json/*.json", "models/*.yaml"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "sidecar": SIDECAR_REQUIRES,
        "pipeline": PIPELINE_REQUIRES,
        "local": [*PIPELINE_REQUIRES, *SIDECAR_REQUIRES, *LOCAL_REQUIRES],
        "dev": DEV_REQUIRES,
    },
    entry_points={"console_scripts": ["predaudit=pipelines.cli:main"]},
)
