"""Bounds on what a DICOM connection may cost the receiver (docs/security-bounds.md), hooked into
pynetdicom 3.0 through its own extension points (``make_server``'s server class, the server's
request handler) and by subclassing its upper-layer (DUL) and DIMSE providers:

* every PDU header is looked at (``MSG_PEEK``) before pynetdicom reads the PDU: one announcing more
  than ``MAX_CONTROL_PDU_BYTES`` (or, for P-DATA once the association is accepted, more than the
  maximum PDU length the receiver announced) is answered with an A-ABORT and the connection closed,
  without reading it;
* a connection still negotiating its association is closed after ``ASSOCIATION_PHASE_S``, and when
  one address (or all together) has too many of them, the oldest is closed: idle sockets cannot
  hold the association slots;
* the data set of one C-STORE is counted as it arrives: past ``MAX_INSTANCE_BYTES`` the rest is
  discarded and the receiver answers the request with a failure status.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from edge.limits import (ASSOCIATION_PHASE_S, MAX_ASSOCIATIONS, MAX_CONTROL_PDU_BYTES, MAX_INSTANCE_BYTES,
                         MAX_PENDING, MAX_PENDING_PER_ADDRESS, RECEIVE_MAX_PDU_BYTES)

log = logging.getLogger("ctedge.dicom")
P_DATA_TF = 0x04
INVALID_PDU_PARAMETER = 0x06   # A-ABORT reason (PS3.8 9.3.8)


class _Throttled:
    """A warning logged at most once per ASSOCIATION_PHASE_S, saying how many events it stands for:
    an attacker opening connections cannot flood the log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count, self._at = 0, None

    def __call__(self, message: str, *args: object) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if self._at is not None and now - self._at < ASSOCIATION_PHASE_S:
                return
            count, self._count, self._at = self._count, 0, now  # type: ignore[assignment]
        log.warning(message + (f" ({count} such events since the last such line)" if count > 1 else ""), *args)


_ABORTED, _EVICTED, _EXPIRED = _Throttled(), _Throttled(), _Throttled()


class GuardedAE(AE):
    """An AE whose servers are ``GuardedServer``: use it exactly as pynetdicom's AE."""

    def __init__(self, ae_title: str):
        super().__init__(ae_title=ae_title)
        self.maximum_pdu_size = RECEIVE_MAX_PDU_BYTES
        self.maximum_associations = MAX_ASSOCIATIONS + MAX_PENDING
        self.acse_timeout = ASSOCIATION_PHASE_S

    def make_server(self, address, ae_title=None, contexts=None, ssl_context=None, evt_handlers=None,
                    server_class=None, **kwargs):
        return super().make_server(address, ae_title, contexts, ssl_context, evt_handlers,
                                   server_class=GuardedServer, **kwargs)


class GuardedServer(ThreadedAssociationServer):
    """Keeps the connections still negotiating (oldest first) and closes those over the bounds."""

    def __init__(self, *args, **kwargs):
        self._pending: dict[Association, tuple[str, float]] = {}
        self._pending_lock = threading.Lock()
        super().__init__(*args, request_handler=GuardedHandler, **kwargs)  # type: ignore[misc]

    def admit(self, assoc: Association, address: str) -> None:
        """Record a new connection, closing the oldest negotiating one of ``address`` (or of all)
        when there are too many."""
        with self._pending_lock:
            self._prune()
            same = [a for a, (addr, _) in self._pending.items() if addr == address]
            oldest = same[0] if len(same) >= MAX_PENDING_PER_ADDRESS else \
                next(iter(self._pending)) if len(self._pending) >= MAX_PENDING else None
            if oldest is not None:
                _EVICTED("closed a DICOM connection still negotiating when another came from %s (at most %d per "
                         "address, %d in all)", address, MAX_PENDING_PER_ADDRESS, MAX_PENDING)
                del self._pending[oldest]
                _close(oldest)
            self._pending[assoc] = (address, time.monotonic())

    def service_actions(self) -> None:
        """Close the connections negotiating for longer than ASSOCIATION_PHASE_S (each poll of the server)."""
        super().service_actions()
        now = time.monotonic()
        with self._pending_lock:
            self._prune()
            for assoc, (address, since) in list(self._pending.items()):
                if now - since > ASSOCIATION_PHASE_S:
                    _EXPIRED("closed a DICOM connection from %s: no association after %.0f s",
                             address, ASSOCIATION_PHASE_S)
                    del self._pending[assoc]
                    _close(assoc)

    def _prune(self) -> None:
        for assoc in list(self._pending):
            finished = assoc.ident is not None and not assoc.is_alive()
            if finished or assoc.is_established or assoc.is_rejected or assoc.is_aborted or assoc.is_released:
                del self._pending[assoc]


class GuardedHandler(RequestHandler):
    """pynetdicom's request handler, with the bounded DUL and DIMSE providers."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # The providers are created by Association.__init__; their subclasses only override methods.
        assoc.dul.__class__ = GuardedDUL
        assoc.dimse.__class__ = GuardedDIMSE
        self.request.settimeout(self.server.ae.network_timeout)  # a PDU stalling mid-way ends the connection
        self.server.admit(assoc, self.client_address[0])  # type: ignore[attr-defined]
        return assoc


class GuardedDUL(DULServiceProvider):
    """Looks at each PDU header before pynetdicom reads the PDU, and refuses one too large."""

    def _read_pdu_data(self) -> None:
        header = self._peek_header()
        if header is not None:
            pdu_type, length = struct.unpack(">BxL", header)
            limit = self.assoc.acceptor.maximum_length \
                if pdu_type == P_DATA_TF and self.assoc.is_established else MAX_CONTROL_PDU_BYTES
            if length > limit:
                _ABORTED("aborted a DICOM connection from %s: a PDU of type 0x%02X announces %d bytes "
                         "(at most %d here)", self.assoc.requestor.address, pdu_type, length, limit)
                abort = A_ABORT_RQ()
                abort.source, abort.reason_diagnostic = 0x02, INVALID_PDU_PARAMETER  # service provider
                self.socket.send(abort.encode())  # type: ignore[union-attr]
                self.socket.close()  # type: ignore[union-attr]
                _end_wait(self.assoc)
                return
        super()._read_pdu_data()

    def _peek_header(self) -> bytes | None:
        """The next 6 bytes on the socket, left there; None when the connection ends or stalls first
        (pynetdicom then reads what there is and sees the connection closed)."""
        sock = self.socket.socket if self.socket else None
        if not isinstance(sock, socket.socket) or sock.__class__ is not socket.socket:
            return None  # e.g. TLS: MSG_PEEK is not available
        deadline = time.monotonic() + (self.network_timeout or ASSOCIATION_PHASE_S)
        while True:
            try:
                data = sock.recv(6, socket.MSG_PEEK)
            except OSError:
                return None
            if len(data) == 6:
                return data
            if not data or time.monotonic() > deadline:
                return None
            time.sleep(0.01)


class GuardedDIMSE(DIMSEServiceProvider):
    """Counts the data set bytes of each message; past MAX_INSTANCE_BYTES they are dropped as they
    arrive and the message id is recorded in ``oversize`` for the C-STORE handler to refuse."""

    def receive_primitive(self, primitive) -> None:
        if self.message is None:
            self._dataset_bytes = 0
        values = []
        for context_id, data in primitive.presentation_data_value_list:
            if not data[0] & 1:  # a data set fragment
                self._dataset_bytes += len(data) - 1
                if self._dataset_bytes > MAX_INSTANCE_BYTES:
                    data = data[:1]  # keep the control header: the message still ends where it ends
            values.append([context_id, data])
        primitive.presentation_data_value_list = values
        if self._dataset_bytes > MAX_INSTANCE_BYTES and self.message is not None:
            self.message.data_set.seek(0)  # type: ignore[union-attr]
            self.message.data_set.truncate()  # type: ignore[union-attr]  # drop what arrived before the bound was passed
            if "MessageID" in self.message.command_set:
                self.oversize.add(int(self.message.command_set.MessageID))
        super().receive_primitive(primitive)

    @property
    def oversize(self) -> set[int]:
        """The message ids of the C-STORE requests whose data set exceeded MAX_INSTANCE_BYTES."""
        if not hasattr(self, "_oversize"):
            self._oversize: set[int] = set()
        return self._oversize


def _close(assoc: Association) -> None:
    """End a connection from another thread: shut its socket down (a blocked read returns at once;
    its DUL then sees the connection closed) and end the acceptor's wait."""
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    _end_wait(assoc)


def _end_wait(assoc: Association) -> None:
    """While the acceptor still waits for the A-ASSOCIATE-RQ, end that wait as a timeout would
    (pynetdicom's acceptor takes None from its queue as one), so its thread ends now."""
    if assoc.requestor.primitive is None:
        assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]
