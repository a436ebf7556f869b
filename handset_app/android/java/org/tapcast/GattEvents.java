package org.tapcast;

import android.bluetooth.BluetoothDevice;

/** Implemented in Python (handset_app/android/gatt.py). */
public interface GattEvents {
    void connection(BluetoothDevice device, int newState);
    /** A write to rx; the Python side answers (sendResponse) itself. */
    void write(BluetoothDevice device, int requestId, byte[] value, boolean responseNeeded);
    void read(BluetoothDevice device, int requestId, int offset, String uuid);
    void subscribed(BluetoothDevice device, boolean on);
    void mtu(BluetoothDevice device, int mtu);
    void notified(BluetoothDevice device, int status);
    void advertising(boolean started, int error);
}
