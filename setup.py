"""predaudit: streaming prediction audit for ML platforms on Google Cloud.

This file is also what Dataflow workers install (``--setup_file``); the Beam pin
below is the single source of the Beam version (the Flex Template Dockerfile
installs this package rather than pinning Beam again).
"""

from setuptools import find_packages, setup

BEAM_VERSION = "2.77.0"

INSTALL_REQUIRES = [
    f"apache-beam[gcp]=={BEAM_VERSION}",
    "google-cloud-pubsub>=2.20",
    "google-cloud-bigquery>=3.20",
    "google-cloud-secret-manager>=2.20,<3",  # --pii_key_secret, --clickhouse_password_secret
    "clickhouse-connect[chdb]>=1.12",
    "msgspec>=0.19",
    "orjson>=3.10",
    "numpy>=1.26",
    "river>=0.22",
    "PyYAML>=6.0",
    # serving sidecar
    "aiohttp>=3.9",
    "prometheus-client>=0.20",
    "cloudevents>=1.11,<2",
    "uvloop>=0.19; sys_platform != 'win32'",  # the sidecar's event loop (asyncio's otherwise)
]

DEV_REQUIRES = [
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
    extras_require={"dev": DEV_REQUIRES},
    entry_points={"console_scripts": ["predaudit=pipelines.cli:main"]},
)
