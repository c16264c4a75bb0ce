"""Shared pytest configuration: fixtures live in tests/fixtures/ modules, one per real service."""

# Each fixture module is listed here once it exists (s3: moto server, prefect: server + worker,
# api: the FastAPI app served by uvicorn; production: the multi-host PostgreSQL stack).
pytest_plugins: list[str] = ["tests.fixtures.s3", "tests.fixtures.prefect", "tests.fixtures.api",
                             "tests.fixtures.production"]
