"""The handlers of the operator's informers (`kube.caches`), which feed the safety net and the
releaser.

Handlers run in the informers' tasks and only queue work (the safety net, manual releases), so a
pod event costs no API call. An object delivered by the first list is not an event (nothing was
freed while we watched: the ledger covers the time we were away). A pod found missing when the
informer lists again after a watch gap (410 Gone) reaches the safety net as a deletion.
"""

from __future__ import annotations

import logging

from capo_operator.decisions.policy import PodFacts
from capo_operator.decisions.record import Record
from capo_operator.flows.safety_net import SafetyNet
from capo_operator.flows.state import Leadership, RecentUIDs, TerminalUIDs
from capo_operator.kube.caches import Caches

logger = logging.getLogger(__name__)


class Watchers:
    """The handlers of one replica's informers: pod changes feed the safety net, record changes
    feed its memory of reserved pods and, on the leader, the manual releases."""

    def __init__(
        self,
        *,
        caches: Caches,
        safety_net: SafetyNet,
        leadership: Leadership,
        reserved_uids: RecentUIDs,
        manual_releases: set[str],
    ) -> None:
        self.caches = caches
        self.views = caches.views
        self.safety_net = safety_net
        self.leadership = leadership
        self.reserved_uids = reserved_uids
        # IPs whose records a person deleted (release now); the releaser takes them out.
        self.manual_releases = manual_releases
        # Pods this replica has seen terminal (from its first listing on): only a transition to
        # Failed/Succeeded frees an IP now; a pod that was terminal already freed it long ago.
        self.terminal_uids = TerminalUIDs(present=self.views.pod_uids)
        caches.pods.add_handlers(
            on_add=self.pod_added, on_update=self.pod_updated, on_delete=self.pod_deleted
        )
        caches.records.add_handlers(
            on_add=self.record_seen,
            on_update=lambda _old, new: self.record_seen(new),
            on_delete=self.record_deleted,
        )

    # -- pods -------------------------------------------------------------------------------------

    def _turned_terminal(self, pod: PodFacts) -> bool:
        """First sight of this pod Failed/Succeeded (only a transition frees an IP now)."""
        terminal = self.terminal_uids
        if pod.terminal and pod.uid not in terminal:
            terminal.add(pod.uid)
            return True
        return False

    def _selected(self, pod: PodFacts) -> bool:
        namespace = self.views.namespace(pod.namespace)
        return namespace is not None and namespace.enabled

    def pod_added(self, pod: PodFacts) -> None:
        # Listed or created: nothing was freed, but a pod listed terminal must not count later.
        turned_terminal = self._turned_terminal(pod)
        if not self.caches.pods.synced.is_set():
            return  # the first list (client-go's "isInInitialList"): not an event
        # Found on a relist after a watch gap, already Failed: it was created and failed unseen.
        if turned_terminal and pod.ips and self._selected(pod):
            self.safety_net.pod_terminated(pod)

    def pod_updated(self, old: PodFacts, new: PodFacts) -> None:
        turned_terminal = self._turned_terminal(new)
        if old is new:  # a resync re-delivers what is cached: no change
            return
        if turned_terminal and new.ips and self._selected(new):
            self.safety_net.pod_terminated(new)

    def pod_deleted(self, pod: PodFacts) -> None:
        # A watch DELETED, or a pod found gone when listing again after a gap: the same to us.
        self.terminal_uids.discard(pod.uid)
        if self._selected(pod):
            self.safety_net.pod_gone(pod)

    # -- records ----------------------------------------------------------------------------------

    def record_seen(self, record: Record) -> None:
        """Every replica: the pod had a record, so the safety net leaves it alone from now on."""
        if record.pod is not None and record.pod.uid:
            self.reserved_uids.add(record.pod.uid)

    def record_deleted(self, record: Record) -> None:
        if not self.leadership.leading or record.releasing is not None:
            return  # standbys do nothing; a record marked releasing is the releaser's own deletion
        logger.info("record %s was deleted by someone: releasing %s now", record.name, record.ip)
        self.manual_releases.add(record.ip)
