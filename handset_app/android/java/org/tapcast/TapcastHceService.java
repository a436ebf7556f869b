package org.tapcast;

import android.nfc.cardemulation.HostApduService;
import android.os.Bundle;

/**
 * Android's host card emulation service for the Tapcast AID (res/xml/apduservice.xml).
 * pyjnius cannot subclass an abstract Java class, so this shim hands every command
 * APDU to the Python handler the app registered; with none (the app is not running)
 * it answers 6985 (conditions of use not satisfied), as the card does when it has no
 * credentials.
 */
public class TapcastHceService extends HostApduService {
    private static volatile ApduHandler handler;

    public static void setHandler(ApduHandler h) { handler = h; }

    @Override
    public byte[] processCommandApdu(byte[] apdu, Bundle extras) {
        ApduHandler h = handler;
        if (h == null) return new byte[] {(byte) 0x69, (byte) 0x85};
        return h.process(apdu);
    }

    @Override
    public void onDeactivated(int reason) {
        ApduHandler h = handler;
        if (h != null) h.deactivated(reason);
    }
}
