package org.tapcast;

import android.bluetooth.BluetoothDevice;
import android.bluetooth.BluetoothGattCharacteristic;
import android.bluetooth.BluetoothGattDescriptor;
import android.bluetooth.BluetoothGattServer;
import android.bluetooth.BluetoothGattServerCallback;
import android.bluetooth.le.AdvertiseCallback;
import android.bluetooth.le.AdvertiseSettings;

/**
 * BluetoothGattServerCallback and AdvertiseCallback are abstract classes, which pyjnius
 * cannot extend: this shim forwards them to a Python GattEvents. Descriptor writes (the
 * node subscribing to tx) are answered here, everything else in Python.
 */
public class TapcastGattCallback extends BluetoothGattServerCallback {
    private final GattEvents events;
    private BluetoothGattServer server;
    public final AdvertiseCallback advertiseCallback;

    public TapcastGattCallback(GattEvents events) {
        this.events = events;
        this.advertiseCallback = new AdvertiseCallback() {
            @Override public void onStartSuccess(AdvertiseSettings settings) {
                TapcastGattCallback.this.events.advertising(true, 0);
            }
            @Override public void onStartFailure(int errorCode) {
                TapcastGattCallback.this.events.advertising(false, errorCode);
            }
        };
    }

    public void setServer(BluetoothGattServer server) { this.server = server; }

    @Override
    public void onConnectionStateChange(BluetoothDevice device, int status, int newState) {
        events.connection(device, newState);
    }

    @Override
    public void onCharacteristicWriteRequest(BluetoothDevice device, int requestId,
            BluetoothGattCharacteristic characteristic, boolean preparedWrite,
            boolean responseNeeded, int offset, byte[] value) {
        if (preparedWrite || offset != 0) {  // long writes exceed MTU-3: refused, as in the simulation
            if (responseNeeded && server != null)
                server.sendResponse(device, requestId, 0x80, offset, null);
            return;
        }
        events.write(device, requestId, value, responseNeeded);
    }

    @Override
    public void onCharacteristicReadRequest(BluetoothDevice device, int requestId, int offset,
            BluetoothGattCharacteristic characteristic) {
        events.read(device, requestId, offset, characteristic.getUuid().toString());
    }

    @Override
    public void onDescriptorWriteRequest(BluetoothDevice device, int requestId,
            BluetoothGattDescriptor descriptor, boolean preparedWrite, boolean responseNeeded,
            int offset, byte[] value) {
        boolean on = value != null && value.length > 0 && value[0] != 0;
        events.subscribed(device, on);
        if (responseNeeded && server != null)
            server.sendResponse(device, requestId, 0, offset, value);
    }

    @Override
    public void onMtuChanged(BluetoothDevice device, int mtu) { events.mtu(device, mtu); }

    @Override
    public void onNotificationSent(BluetoothDevice device, int status) {
        events.notified(device, status);
    }
}
