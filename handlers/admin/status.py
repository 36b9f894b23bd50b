"""/admin/api/status: what the dashboard's header shows."""

from __future__ import annotations

from .base import AdminApiHandler


class StatusHandler(AdminApiHandler):
    def get(self) -> None:
        services = self.services
        log = services.request_log
        self.write_json(
            {
                "upstream": {
                    "mode": services.upstreams.mode,
                    "base_url": services.upstreams.base_url,
                    **services.upstreams.status(),
                },
                "uptime_seconds": round(services.uptime(), 1),
                "in_flight": log.in_flight,
                "instance": log.instance,
                "dropped_records": services.history.dropped + services.dropped_records(),
                "totals": {outcome: log.totals.get(outcome, 0) for outcome in ("ok", "error", "cancelled")},
                "knowledge_version": services.knowledge_base.version,
                "documents": len(services.knowledge_base),
                "passages": services.retriever.passage_count,
                "semantic_retrieval": services.retriever.semantic_ready,
                "active_clip": services.audio_library.active_name(),
                "shared": None if services.shared is None else {"reachable": services.shared.available},
            }
        )


default_handlers = [(r"/admin/api/status", StatusHandler)]
