"""Property-based fuzzing from the served OpenAPI document (schemathesis) against a real
`neruba serve --docs` on each database, with a key holding every scope over a seeded project:
no answer is a 500, and every answer conforms to the document (its status is declared, its
body matches the declared model or the error shape, its declared headers are there, and an
operation that declares a key refuses a request without one).

Each operation gets valid requests with generated path values, valid requests on the seeded
rows (so lookups reach real customers and invoices), and invalid requests (which must be
refused with a declared 4xx, except in an operation that declares `x-neruba-per-item-results`:
its invalid items are rejected one by one in a 200). The example counts keep a run within a
few minutes a database; `derandomize` makes a failure repeat on the next run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from neruba_cli.api.openapi import PER_ITEM_EXTENSION
from neruba_cli.domain.keys import SCOPES
from tests.support.api import key, load_schema, seed
from tests.support.cli import Cli

EXAMPLES = {"valid": 15, "seeded": 8, "invalid": 10}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.ignored_auth,
]
INVALID_CHECKS = [*CHECKS, checks.negative_data_rejection]


def _run(strategy: st.SearchStrategy[Any], count: int, call: Any) -> None:
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        call(case)

    run()


def test_fuzzed_requests_get_declared_answers_and_never_a_500(  # type: ignore[no-untyped-def]
    cli: Cli, serve, tmp_path: Path
) -> None:
    seeded = seed(cli, tmp_path)
    secret = key(cli, *SCOPES)
    server = serve(cli.db_url, "--docs")
    schema = schemathesis.openapi.from_dict(load_schema(server))
    headers = {"Authorization": f"Bearer {secret}"}
    failures: list[str] = []
    statuses: dict[tuple[str, str], set[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 2
    for operation in operations:
        names = [p.name for p in operation.path_parameters]
        real = {name: seeded.path_values[name] for name in names}
        plans: list[tuple[str, st.SearchStrategy[Any], list[Any]]] = [
            ("valid", operation.as_strategy(), CHECKS)
        ]
        if any(True for _ in operation.iter_parameters()) or operation.body:  # inputs to spoil
            negative = operation.as_strategy(GenerationMode.NEGATIVE)
            # An operation that judges its items one by one answers 200 with them rejected.
            per_item = operation.definition.raw.get(PER_ITEM_EXTENSION, False)
            plans.append(("invalid", negative, CHECKS if per_item else INVALID_CHECKS))
        if names:
            plans.append(("seeded", operation.as_strategy(path_parameters=real), CHECKS))
        for label, strategy, used in plans:
            seen = statuses.setdefault((operation.label, label), set())

            def call(case: Any, used: list[Any] = used, seen: set[int] = seen) -> None:
                answer = case.call(base_url=server.url, headers=headers, timeout=60)
                seen.add(answer.status_code)
                case.validate_response(answer, checks=used, headers=headers)

            try:
                _run(strategy, EXAMPLES[label], call)
            except Exception as exc:  # every operation is fuzzed, then all failures told
                failures.append(f"{operation.label} ({label}): {exc}"[:3000])
    assert not failures, "\n\n".join(failures)
    for (label, plan), seen in statuses.items():
        if plan == "seeded" and label.startswith("GET "):
            assert any(200 <= status < 300 for status in seen), (label, seen)  # real rows
