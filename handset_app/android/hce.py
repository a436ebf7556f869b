"""Android host card emulation of the Tapcast card, through pyjnius.

Android routes APDUs for the Tapcast AID (res/xml/apduservice.xml) to
org.tapcast.TapcastHceService (java/), a HostApduService shim: pyjnius cannot extend an
abstract Java class, so the shim hands each command APDU to this Python handler. The
handler runs the same card application as the simulation (tapcast.protocol.nfc
.HandsetCard): Android's NFC controller does ISO-DEP, the part handset_app/nfc_hce.py
plays over nfcpy's udp driver. NOT exercised by the tests here.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from jnius import PythonJavaClass, autoclass, java_method  # type: ignore[import-not-found]

from tapcast.protocol.nfc import HandsetCard, HandsetSession

log = logging.getLogger(__name__)

#: 6985: conditions of use not satisfied (no card: the customer is not signed in)
NOT_READY = bytes.fromhex("6985")


class AndroidCard(PythonJavaClass):  # type: ignore[misc]
    """The ApduHandler the HCE service calls, on a binder thread. ``make_card`` gives the
    card for the next tap (credentials, the GATT server's address, consent flags) or
    None; ``on_session`` gets each authenticated session (called on that thread: hand it
    to the app's loop with call_soon_threadsafe)."""

    __javainterfaces__ = ["org/tapcast/ApduHandler"]
    __javacontext__ = "app"

    def __init__(self, make_card: Callable[[], HandsetCard | None],
                 on_session: Callable[[HandsetSession], None]) -> None:
        super().__init__()
        self.make_card = make_card
        self.on_session = on_session
        self.card: HandsetCard | None = None

    def enable(self) -> None:
        autoclass("org.tapcast.TapcastHceService").setHandler(self)

    def disable(self) -> None:
        autoclass("org.tapcast.TapcastHceService").setHandler(None)

    @java_method("([B)[B")
    def process(self, apdu: bytes) -> bytes:
        if self.card is None:
            self.card = self.make_card()
            if self.card is None:
                return NOT_READY
        response = self.card.process_apdu(bytes(apdu))  # never raises (a status word)
        session = self.card.session
        if session is not None:  # CONFIRM accepted: the tap is done
            self.card = None
            self.on_session(session)
        return response

    @java_method("(I)V")
    def deactivated(self, reason: int) -> None:
        """The field went or another AID was selected: a half-done exchange is dropped."""
        if self.card is not None:
            log.info("hce: deactivated (%d) before the exchange finished", reason)
            self.card = None
