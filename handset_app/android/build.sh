#!/bin/sh
# Stage the Android app's sources and run buildozer on them (not run by the tests here).
# Needs buildozer (pip install buildozer) and what it installs (Android SDK/NDK, Java 17).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
stage="$repo/build/android"
rm -rf "$stage/tapcast" "$stage/handset_app"
mkdir -p "$stage"
cp "$here/buildozer.spec" "$here/main.py" "$here/service_manifest.xml" "$stage/"
cp -r "$here/java" "$here/res" "$stage/"
cp -r "$repo/tapcast" "$stage/tapcast"
mkdir -p "$stage/handset_app"
# the app, its screens and the phone's core; not the desktop simulation (nfcpy, bumble)
for f in __init__.py app.py phone.py phonestore.py consent.py hubclient.py; do
  [ -f "$repo/handset_app/$f" ] && cp "$repo/handset_app/$f" "$stage/handset_app/"
done
cp -r "$repo/handset_app/screens" "$repo/handset_app/android" "$stage/handset_app/"
cd "$stage" && exec buildozer android debug
