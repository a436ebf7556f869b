"""The app's Android transports, through pyjnius: host card emulation (hce.py) and the
BLE GATT server (gatt.py), doing on Android's APIs what handset_app/nfc_hce.py and
handset_app/ble_peripheral.py do on nfcpy and bumble. Imported only on Android; not
exercised by the tests here (docs/handset_app.md)."""
