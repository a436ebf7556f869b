package org.tapcast;

/** Implemented in Python (pyjnius PythonJavaClass, handset_app/android/hce.py). */
public interface ApduHandler {
    byte[] process(byte[] apdu);
    void deactivated(int reason);
}
