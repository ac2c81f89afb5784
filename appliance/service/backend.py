"""What the service layer needs from the scheduler, beyond the HTTP layer's AdminBackend.

appliance.scheduler.Scheduler implements it: the daemon starts and stops it, the catalog
watcher hands it re-read catalogs, the drain stops its admissions, the watchdog reads its
runners' progress, and the metrics receive its events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Protocol

from ..api.backend import AdminBackend

if TYPE_CHECKING:
    from ..config import Catalog
    from ..engine.protocol import DrivenRunner
    from ..scheduler.core import SchedulerEvents


class ServiceBackend(AdminBackend, Protocol):
    events: SchedulerEvents  # where loads, evictions and queue waits are reported

    def runners(self) -> Mapping[str, DrivenRunner]:
        """Model id -> runner of every model that has one (loaded, or unloading)."""
        ...

    async def start(self) -> None:
        """Check the devices and the pinned models, and load those (ConfigError: exit 2)."""
        ...

    def drain(self) -> None:
        """Refuse new requests (503 draining); waiting and running ones go on."""
        ...

    async def stop(self) -> None:
        """Fail what waits, let what runs finish, unload everything."""
        ...

    def update_catalog(self, catalog: Catalog) -> None:
        """models.toml was re-read: new ids at once, changed settings at the next load."""
        ...
