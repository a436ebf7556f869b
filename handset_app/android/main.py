"""The Tapcast app on Android (buildozer.spec, built by build.sh): the Kivy app of
handset_app/app.py on a Phone whose radios are Android's: host card emulation
(hce.py) answers the node's reader, and the GATT server (gatt.py) stands where the
simulation's bumble peripheral does (Phone.peripheral). A tap here is the reader
talking to the HCE service, not a button: each authenticated session goes to
Phone.attach, as the no-NFC code path does. NOT exercised by the tests here.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from handset_app.android.gatt import AndroidGattPeripheral
from handset_app.android.hce import AndroidCard
from handset_app.app import TapcastApp, run_app
from handset_app.hubclient import HubClient
from handset_app.phone import Phone
from tapcast.protocol.nfc import HandsetCard, HandsetSession

log = logging.getLogger(__name__)


async def main() -> None:
    data_dir = Path(os.environ.get("ANDROID_PRIVATE", ".")) / "tapcast"
    phone = Phone(data_dir)
    peripheral = AndroidGattPeripheral(window=phone.window)
    peripheral.start()
    phone.peripheral = peripheral  # type: ignore[assignment] - BlePeripheral's surface
    app = TapcastApp(phone, hub_client=HubClient.load(data_dir), radio_ready=True)
    loop = asyncio.get_running_loop()

    def make_card() -> HandsetCard | None:
        creds = phone.credentials
        if creds is None:
            return None  # not signed in: the HCE service answers 6985
        return HandsetCard(creds, peripheral.address, ble_address_type=peripheral.address_type,
                           consent=phone.consent().flags)

    def on_session(session: HandsetSession) -> None:  # on a binder thread
        loop.call_soon_threadsafe(lambda: app.spawn(phone.attach(
            session.node_id, session.zone, session.session_key, channel="nfc",
            listener=app.listener)))

    card = AndroidCard(make_card, on_session)
    card.enable()
    try:
        await run_app(app)
    finally:
        card.disable()
        await peripheral.close()


if __name__ == "__main__":
    asyncio.run(main())
