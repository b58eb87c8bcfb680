"""The project and its meters, kept by each worker for `CATALOG_CACHE_SECONDS`.

Every ingest request checks its events against the project's meters; reading and parsing them
per request would cost more than storing the event. A meter the cache does not know is looked
up again before an event naming it is refused, so a meter `catalog apply` just added is
accepted at once; a changed meter (its aggregation, `allow_negative`, the property it reads)
takes effect within `CATALOG_CACHE_SECONDS`, as a revoked key does.

With them, the ids of the project's customers that single events named (`customers`): a
customer is never deleted nor renumbered, so an event naming one is written without looking
it up again (the list starts over past `MAX_CUSTOMERS`). An unknown customer is
never kept: it is looked up every time, so a customer created meanwhile is found at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from fastapi.concurrency import run_in_threadpool

from neruba_cli.api.auth import Caller
from neruba_cli.api.shared_reads import SharedReads
from neruba_cli.db.schema import Project
from neruba_cli.domain.catalog import MeterDef
from neruba_cli.services.catalog import store as catalog_store

CATALOG_CACHE_SECONDS = 5.0
MAX_CUSTOMERS = 10_000  # ids kept per project at most


class CatalogCache:
    def __init__(self, seconds: float = CATALOG_CACHE_SECONDS) -> None:
        self.seconds = seconds
        self._entries: dict[str, tuple[float, Project, dict[str, MeterDef]]] = {}
        self._customers: dict[str, dict[str, tuple[str, str]]] = {}
        self._lock = threading.Lock()
        self._reads = SharedReads()  # one read of a project's catalog for the requests waiting

    def get(
        self, caller: Caller, meters: Iterable[object] = ()
    ) -> tuple[Project, dict[str, MeterDef]]:
        """The caller's project and its meters: the kept ones while they are fresh and know
        every name in `meters`, else read again."""
        kept = self.peek(caller, meters)
        if kept is not None:
            return kept
        slug = caller.key.project_slug
        with caller.transaction() as session:
            project = caller.project(session)
            known = catalog_store.stored_meters(session, project)
        with self._lock:
            if len(self._entries) > 1000:  # many projects: start over rather than grow
                self._entries.clear()
            self._entries[slug] = (time.monotonic() + self.seconds, project, known)
        return project, known

    def peek(
        self, caller: Caller, meters: Iterable[object] = ()
    ) -> tuple[Project, dict[str, MeterDef]] | None:
        """The kept project and meters, without reading the database: None when they are
        stale or miss a name in `meters` (then `get` reads them)."""
        with self._lock:
            entry = self._entries.get(caller.key.project_slug)
        if entry is None:
            return None
        deadline, project, known = entry
        if time.monotonic() >= deadline:
            return None
        if not all(name in known for name in meters if isinstance(name, str)):
            return None
        return project, known

    async def fresh(
        self, caller: Caller, meters: Iterable[object] = ()
    ) -> tuple[Project, dict[str, MeterDef]]:
        """`get` for the event loop: the kept ones at once, a read in a worker thread."""
        kept = self.peek(caller, meters)
        if kept is not None:
            return kept
        names = tuple(meters)
        slug = caller.key.project_slug
        read = await self._reads.read(slug, self.get, caller, names)
        if all(name in read[1] for name in names if isinstance(name, str)):
            return read
        return await run_in_threadpool(self.get, caller, names)  # a read begun before a new meter

    def customers(self, project: Project) -> dict[str, tuple[str, str]]:
        """The project's customers seen so far (external id → id and currency), for
        `posted.write_group` to read and add to; by the project's id, which a slug given to
        a new project after a deletion would not share."""
        with self._lock:
            if len(self._customers) > 1000:
                self._customers.clear()
            known = self._customers.setdefault(project.id, {})
            if len(known) > MAX_CUSTOMERS:
                known.clear()
            return known
