"""The virtual BLE air: bumble virtual controllers on one LocalLink, each reachable over
an HCI transport, so nodes in their own processes and handsets in this one share a
radio medium.

One process hosts the air (``VirtualAir``). Each device gets its own controller; a
device in another process attaches with ``bumble:tcp-client:127.0.0.1:PORT`` (see
:meth:`VirtualAir.serve`), one in this process with :meth:`VirtualAir.local_adapter`.

Stock bumble 0.0.236 pieces that fail across processes, and what this module does
instead (without patching bumble):

1. LE Create Connection Cancel completes with nothing: the host then waits forever for
   the failed connection. :class:`AirController` clears the pending connect and sends
   LE Connection Complete with "Unknown Connection Identifier", as a real controller
   does, so ``Device.connect(timeout=...)`` times out cleanly and the next connect works.
2. HCI Reset does nothing, so a host killed with SIGKILL leaves its connections and
   advertising alive on the air: peers are never told and a ghost keeps advertising.
   On Reset, and when a host's transport closes, :meth:`AirController.drop_everything`
   terminates its links (peers get a disconnection), stops advertising and scanning and
   forgets a pending connect.
3. bumble's ``tcp-server:`` transport shares one packet parser across successive
   connections (a dead client's half packet swallows the next host's Reset) and lets a
   second client take a controller silently: :class:`_ControllerPort` is a small server
   of its own, a fresh parser per connection and one client per port.
4. Unimplemented asynchronous commands (LE Set PHY, ...) got no Command Status and the
   host waited forever: they are answered "Unknown HCI Command".
5. ``LocalLink.send_acl_data`` sends LE data from the sender's *random* address, so a
   peripheral advertising its *public* address never gets its replies through:
   :class:`_LeLink` sends from the connection's own address.
6. The controller reports an LE ACL data length of 251 bytes (the Data Length Extension
   maximum) instead of 27, since it does not implement LE Set Data Length.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from bumble import core, hci, ll
from bumble.controller import Controller
from bumble.link import LocalLink
from bumble.transport.common import PacketParser

from tapcast.radio.bumble import HciAdapter

log = logging.getLogger(__name__)

#: LE ACL payload the virtual controllers report (Data Length Extension maximum).
LE_DATA_LENGTH = 251


class _LeLink(LocalLink):
    """LocalLink whose LE data carries the connection's own address as source."""

    def send_acl_data(self, sender_controller: Controller, destination_address: hci.Address,
                      transport: core.PhysicalTransport, data: bytes) -> None:
        if transport == core.PhysicalTransport.LE:
            connection = sender_controller.le_connections.get(destination_address)
            destination = self.find_le_controller(destination_address)
            if connection is not None and destination is not None:
                source = connection.self_address
                asyncio.get_running_loop().call_soon(
                    destination.on_link_acl_data, source, transport, data)
                return
        super().send_acl_data(sender_controller, destination_address, transport, data)


class AirController(Controller):
    """A virtual controller that cancels connects, resets, and dies like a real one."""

    #: The central whose CONNECT_IND this advertiser accepted but has not processed yet,
    #: and the advertiser (legacy or a set) it answered (see create_le_connection).
    _reserved_for: hci.Address | None = None
    _reserved_advertiser: Any = None

    def _advertiser_for(self, address: hci.Address) -> Any:
        """The enabled, unreserved advertiser using ``address``, or None."""
        if self._reserved_for is not None:
            return None
        legacy = self.le_legacy_advertiser
        if legacy.enabled and legacy.address == address:
            return legacy
        return next((s for s in self.advertising_sets.values()
                     if s.enabled and s.address == address), None)

    def create_le_connection(self, peer_address: hci.Address) -> None:
        """Connect only if the peer still advertises connectable and no other central's
        CONNECT_IND is on its way to it. Stock bumble reports the connection complete to
        the central at once, even when the peer then ignores the CONNECT_IND (it stopped
        advertising, or another central got there first), and the central then waits 30 s
        on its first ATT request. A real link would fail to be established; here the
        connect stays pending until the next advertisement or the connect timeout."""
        pending = self.pending_le_connection
        peer = self.link.find_le_controller(peer_address)
        if pending is None or not isinstance(peer, AirController):
            return
        advertiser = peer._advertiser_for(peer_address)
        if advertiser is None:
            return
        own_public = pending.own_address_type == hci.OwnAddressType.PUBLIC
        peer._reserved_for = self.public_address if own_public else self.random_address
        peer._reserved_advertiser = advertiser
        super().create_le_connection(peer_address)

    def on_le_connect_ind(self, packet: ll.ConnectInd) -> None:
        reserved, self._reserved_for = self._reserved_for, None
        advertiser, self._reserved_advertiser = self._reserved_advertiser, None
        if reserved == packet.initiator_address and advertiser is not None \
                and not advertiser.enabled:
            # The central was promised this link when it sent CONNECT_IND; if the host
            # disabled advertising meanwhile, the link still completes (as on air, the
            # CONNECT_IND was sent before the disable took effect).
            advertiser.enabled = True
        super().on_le_connect_ind(packet)

    def on_hci_le_create_connection_cancel_command(
            self, command: hci.HCI_LE_Create_Connection_Cancel_Command,
    ) -> hci.HCI_StatusReturnParameters:
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        peer = pending.peer_address
        # After the Command Complete this handler's return value becomes (Core Vol 4,
        # Part E, 7.8.13): the failed connect is reported as LE Connection Complete.
        asyncio.get_running_loop().call_soon(self.send_hci_packet, hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0, role=hci.Role.CENTRAL, peer_address_type=peer.address_type,
            peer_address=peer, connection_interval=0, peripheral_latency=0,
            supervision_timeout=0, central_clock_accuracy=0))
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)

    def on_hci_reset_command(self, command: hci.HCI_Reset_Command) -> hci.HCI_StatusReturnParameters:
        self.drop_everything()
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)

    def on_hci_command(self, command: hci.HCI_Command) -> Any:
        if isinstance(command, hci.HCI_SyncCommand):
            return super().on_hci_command(command)
        log.debug("%s: unsupported async command %s", self.name, command.name)
        self._send_hci_command_status(hci.HCI_ErrorCode.UNKNOWN_HCI_COMMAND_ERROR, command.op_code)
        return None

    def drop_everything(self, reason: int = hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR) -> None:
        """What a real controller loses on reset or power loss: links (peers are told),
        advertising, scanning, a pending connect."""
        for peer, connection in list(self.le_connections.items()):
            try:
                connection.send_ll_control_pdu(ll.TerminateInd(reason))
            except core.InvalidArgumentError:  # the peer is gone from the air too
                pass
            self.le_connections.pop(peer, None)
        self.le_legacy_advertiser.stop()
        for advertising_set in self.advertising_sets.values():
            advertising_set.stop()
        self.advertising_sets.clear()
        self.le_scan_enable = False
        self.pending_le_connection = None
        self._reserved_for = None
        self._reserved_advertiser = None


class _HostSink:
    """Controller -> host packets onto one TCP connection."""

    def __init__(self, writer: asyncio.Transport) -> None:
        self.writer = writer

    def on_packet(self, packet: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(packet)


class _ControllerPort(asyncio.Protocol):
    """One host connection to one controller: a fresh HCI parser per connection."""

    def __init__(self, owner: _ServedController) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.parser: PacketParser | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.owner.client is not None:
            log.warning("%s: a second host tried to attach; refused", self.owner.controller.name)
            transport.close()
            return
        self.transport = transport
        self.owner.client = self
        self.parser = PacketParser(self.owner.controller)
        self.owner.controller.host = _HostSink(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            try:
                self.parser.feed_data(data)
            except Exception as exc:  # a garbled host must not take the air down
                log.warning("%s: bad HCI data from host, dropping it: %r",
                            self.owner.controller.name, exc)
                if self.transport is not None:
                    self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner.client is self:
            self.owner.client = None
            controller = self.owner.controller
            controller.host = None
            controller.drop_everything()
            log.debug("%s: host detached", controller.name)


class _ServedController:
    def __init__(self, controller: AirController) -> None:
        self.controller = controller
        self.client: _ControllerPort | None = None
        self.server: asyncio.Server | None = None
        self.port = 0


class VirtualAir:
    """One shared radio medium and its controllers. Create it inside the running event
    loop (bumble schedules on it) and :meth:`close` it when the hall stops."""

    def __init__(self, *, data_length: int = LE_DATA_LENGTH, host: str = "127.0.0.1") -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("create VirtualAir inside the running event loop: bumble's "
                               "controllers schedule on it") from None
        if not 27 <= data_length <= 251:
            raise ValueError(f"data_length must be 27..251 (LE Data Length), got {data_length}")
        self.link = _LeLink()
        self.data_length = data_length
        self.host = host
        self._serial = itertools.count(1)
        self._served: dict[str, _ServedController] = {}
        self._local: list[AirController] = []

    def add_controller(self, name: str) -> AirController:
        n = next(self._serial)
        controller = AirController(
            name, link=self.link,
            public_address="00:1B:DC:" + ":".join(f"{b:02X}" for b in n.to_bytes(3, "big")))
        # Before the host powers on: it reads these with LE Read Buffer Size.
        controller.le_acl_data_packet_length = self.data_length
        controller.supported_max_tx_octets = self.data_length
        controller.supported_max_rx_octets = self.data_length
        controller.suggested_max_tx_octets = self.data_length
        return controller

    def local_adapter(self, name: str, *, address: str | None = None) -> HciAdapter:
        """An adapter for a device in this process (a handset of the crowd, a test)."""
        controller = self.add_controller(name)
        self._local.append(controller)
        return HciAdapter((controller, controller), name=name, address=address)

    async def serve(self, name: str, port: int = 0) -> str:
        """A controller reachable over TCP; returns the BLE adapter string a process
        uses to attach to it ("bumble:tcp-client:127.0.0.1:PORT")."""
        if name in self._served:
            raise ValueError(f"a controller named {name!r} is already served")
        served = _ServedController(self.add_controller(name))
        loop = asyncio.get_running_loop()
        served.server = await loop.create_server(lambda: _ControllerPort(served), self.host, port)
        served.port = served.server.sockets[0].getsockname()[1]
        self._served[name] = served
        log.debug("air: %s on %s:%d", name, self.host, served.port)
        return f"bumble:tcp-client:{self.host}:{served.port}"

    def attached(self, name: str) -> bool:
        """Whether a host is attached to the served controller ``name`` now."""
        served = self._served.get(name)
        return served is not None and served.client is not None

    async def close(self) -> None:
        for served in self._served.values():
            if served.server is not None:
                served.server.close()
            if served.client is not None and served.client.transport is not None:
                served.client.transport.close()
            served.controller.drop_everything()
        for served in self._served.values():
            if served.server is not None:
                await served.server.wait_closed()
        for controller in self._local:
            controller.drop_everything()
        for controller in list(self.link.controllers):
            self.link.remove_controller(controller)
        self._served.clear()
        self._local.clear()
