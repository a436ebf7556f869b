"""Host card emulation of the handset over nfcpy, the way Android HCE does it.

nfcpy has no ISO-DEP *card* side (its tag emulation covers Type 3 only), so this module
is the thin ISO 14443-4 target layer Android's NFC controller + HCE service provide:
answer RATS with an ATS, then carry APDUs in I-blocks, with chaining in both
directions, R(ACK)/R(NAK) handling and S(DESELECT). Each complete command APDU goes to
HandsetCard.process_apdu and its response goes back.

With nfcpy's udp driver, "a tap" is the handset listening on the node's udp port: the
reader sends SENS_REQ to HOST:PORT, the card binds PORT and answers.
"""
from __future__ import annotations

import logging
import os
import time

import nfc
import nfc.clf

from tapcast.protocol.nfc import HandsetCard, HandsetSession

log = logging.getLogger(__name__)

# NFC-A activation answers of an Android phone in HCE mode: SENS_RES 0400 (single-size
# NFCID1, bit-frame anticollision), a random NFCID1 starting 08 (ISO 14443-3 "random
# UID"), SEL_RES 20 (ISO-DEP compliant, not NFC-DEP).
SENS_RES = bytes.fromhex("0400")
SEL_RES = bytes.fromhex("20")

# ATS: TL=05, T0=78 (TA, TB, TC present; FSCI 8 = 256-byte frames), TA=80 (106 kbit/s
# only), TB=A0 (FWI 10: frame waiting time 4096/fc * 2^10 = 309 ms, SFGI 0), TC=00 (no
# CID, no NAD). The long FWT is deliberate: the card is Python under a GIL and must not
# time out while it signs (Android uses a shorter FWI plus S(WTX) requests).
ATS = bytes.fromhex("057880A000")

FSD_TABLE = (16, 24, 32, 40, 48, 64, 96, 128, 256)

PCB_DESELECT = 0xC2


class _IsoDepTarget:
    """ISO-DEP card-side block protocol for one activation (RATS to DESELECT/RFOFF)."""

    def __init__(self, clf: nfc.ContactlessFrontend, card: HandsetCard, rats: bytes,
                 link_timeout: float) -> None:
        self.clf = clf
        self.card = card
        self.link_timeout = link_timeout
        fsdi = min(rats[1] >> 4, 8) if len(rats) > 1 else 8
        self.max_inf = FSD_TABLE[fsdi] - 3  # 1 byte PCB + 2 bytes CRC (virtual on udp)
        self.rx_chain = bytearray()
        self.tx_pending = b""
        self.last_block: bytes | None = None
        self.apdus = 0
        self.deselected = False

    def run(self, deadline: float) -> None:
        response: bytes | None = ATS
        while True:
            wait = min(self.link_timeout, deadline - time.monotonic())
            if wait <= 0:
                log.debug("hce: timeout, leaving the field")
                return
            try:
                command = self.clf.exchange(response, wait)
            except nfc.clf.BrokenLinkError:
                log.debug("hce: RFOFF")
                return
            except nfc.clf.TimeoutError:
                log.debug("hce: reader silent for %.3f s", wait)
                return
            except nfc.clf.CommunicationError as exc:
                log.debug("hce: %s", exc)
                response = None
                continue
            if command is None:
                return
            response = self._block(bytes(command))
            if self.deselected:
                self.clf.exchange(response, 0)  # send the S(DESELECT) answer, receive nothing
                return
            if response is not None:
                self.last_block = response

    def _send_chunk(self, block_number: int) -> bytes:
        chunk, self.tx_pending = self.tx_pending[:self.max_inf], self.tx_pending[self.max_inf:]
        pcb = (0x12 if self.tx_pending else 0x02) | block_number
        return bytes([pcb]) + chunk

    def _block(self, frame: bytes) -> bytes | None:
        """The answer to one reader frame; None keeps silent (ISO 14443-4 error rule)."""
        if not frame:
            return None
        pcb = frame[0]
        if frame in (b"\x26", b"\x52"):  # SENS_REQ/ALL_REQ: the reader started over
            raise nfc.clf.BrokenLinkError("reader restarted polling")
        if pcb & 0xE2 == 0x02:  # I-block
            if pcb & 0x0C:  # CID or NAD following: not announced in our ATS
                log.debug("hce: I-block with CID/NAD ignored")
                return None
            bn = pcb & 0x01
            self.rx_chain += frame[1:]
            if pcb & 0x10:  # reader chains: acknowledge, wait for more
                return bytes([0xA2 | bn])
            apdu, self.rx_chain = bytes(self.rx_chain), bytearray()
            self.apdus += 1
            self.tx_pending = self.card.process_apdu(apdu)
            return self._send_chunk(bn)
        if pcb & 0xE6 == 0xA2:  # R-block
            bn = pcb & 0x01
            last_bn = self.last_block[0] & 0x01 if self.last_block else None
            if pcb & 0x10:  # R(NAK): retransmit request or presence check
                if bn == last_bn and self.last_block is not None:
                    return self.last_block
                return bytes([0xA2 | (last_bn or 0)])
            if bn == last_bn and self.last_block is not None:  # R(ACK), same number: resend
                return self.last_block
            if self.tx_pending:  # R(ACK) for our chained answer: next piece
                return self._send_chunk(bn)
            return None
        if pcb & 0xF7 == PCB_DESELECT:
            self.deselected = True
            return bytes([PCB_DESELECT])
        log.debug("hce: unknown block %s ignored", frame.hex())
        return None


def emulate_card(device_path: str, card: HandsetCard, timeout: float,
                 link_timeout: float = 1.0) -> HandsetSession | None:
    """Listen as an ISO-DEP card on ``device_path`` (e.g. "udp:127.0.0.1:PORT") until
    one tap has exchanged APDUs and ended (DESELECT, RFOFF, or the reader going silent
    for ``link_timeout``), or ``timeout`` seconds pass. Returns the HandsetSession if
    that tap confirmed, else None. Blocking: run it in a thread. ``card.session`` is
    cleared first. On udp, a port already bound by another listening handset makes
    nfcpy's listen fail, and this returns None at once (one card per node port).
    Raises OSError if the device cannot be opened."""
    card.session = None
    deadline = time.monotonic() + timeout
    clf = nfc.ContactlessFrontend()
    if not clf.open(device_path):
        raise OSError(f"cannot open NFC device {device_path!r}")
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            target = nfc.clf.LocalTarget("106A")
            target.sens_res = SENS_RES
            target.sdd_res = b"\x08" + os.urandom(3)
            target.sel_res = SEL_RES
            activated = clf.listen(target, remaining)
            if activated is None:
                break
            rats = bytes(activated.tt4_cmd or b"")
            if not rats.startswith(b"\xE0"):
                log.debug("hce: reader did not send RATS (%s), not for us", rats.hex())
                continue
            card.reset()
            iso_dep = _IsoDepTarget(clf, card, rats, link_timeout)
            try:
                iso_dep.run(deadline)
            except nfc.clf.BrokenLinkError as exc:
                log.debug("hce: %s", exc)
            card.reset()
            if iso_dep.apdus:
                return card.session
        return None
    finally:
        clf.close()
