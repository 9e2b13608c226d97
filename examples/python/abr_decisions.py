#!/usr/bin/python3
"""Drive abrcontroller from Python and print its decisions.

Loads the installed hybridlive plugins the usual way (GST_PLUGIN_PATH or a system install):

    GST_PLUGIN_PATH=/usr/local/lib/x86_64-linux-gnu/gstreamer-1.0 ./abr_decisions.py [--seconds N]

A live 720p test pattern is scaled through a capsfilter (the rung) and encoded with x264;
abrcontroller sits after the encoder. The application plays the part of a network estimator:
it sends `abr-estimate` custom events upstream from the sink (any element or app can), first
saying the uplink carries 4 Mbit/s, then 900 kbit/s, then 5 Mbit/s. abrcontroller steers the
encoder's bitrate and, when the bitrate no longer affords the rung, the resolution; each change
is an `abr-decision` element message, printed here.

Needs Debian's python3 with python3-gi and gir1.2-gstreamer-1.0 (scripts/setup installs them).
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

PIPELINE = (
    "videotestsrc is-live=true pattern=zone-plate kx2=20 ky2=20 kt=1 ! "
    "video/x-raw,width=1280,height=720,framerate=30/1,format=I420 ! "
    "videoscale ! capsfilter name=rung ! "
    "x264enc name=enc tune=zerolatency speed-preset=ultrafast bitrate=3000 ! "
    "abrcontroller name=abr capsfilter-name=rung "
    "ladder=1280x720@30:1500-4000;640x360@30:0-1500 ! "
    "fakesink name=sink"
)

# (seconds after start, estimated uplink bit/s)
ESTIMATES = [(0.5, 4_000_000), (3.0, 900_000), (7.0, 5_000_000)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()

    Gst.init(None)
    if Gst.ElementFactory.find("abrcontroller") is None:
        print("abrcontroller not found: set GST_PLUGIN_PATH to the installed plugins", file=sys.stderr)
        return 2

    pipeline = Gst.parse_launch(PIPELINE)
    sink = pipeline.get_by_name("sink")
    loop = GLib.MainLoop()
    status = {"code": 0, "decisions": 0}

    def send_estimate(bps: int) -> bool:
        s = Gst.Structure.new_empty("abr-estimate")
        s.set_value("bitrate", GLib.Variant("t", bps).unpack())
        # An upstream event sent to a sink element travels upstream through abrcontroller.
        sink.send_event(Gst.Event.new_custom(Gst.EventType.CUSTOM_UPSTREAM, s))
        print(f"app: uplink estimate now {bps // 1000} kbit/s", flush=True)
        return GLib.SOURCE_REMOVE

    def on_message(_bus, msg):
        if msg.type == Gst.MessageType.ELEMENT:
            s = msg.get_structure()
            if s.get_name() == "abr-decision":
                status["decisions"] += 1
                fields = {k: s.get_value(k) for k in ("bitrate", "rung", "direction", "reason")}
                size = ""
                if s.has_field("width"):
                    size = f" {s.get_value('width')}x{s.get_value('height')}"
                print(
                    f"abr-decision: bitrate={fields['bitrate'] // 1000} kbit/s "
                    f"rung={fields['rung']}{size} {fields['direction']} ({fields['reason']})",
                    flush=True,
                )
        elif msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            print(f"error from {msg.src.get_path_string()}: {err.message} ({debug})", file=sys.stderr)
            status["code"] = 1
            loop.quit()
        return True

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    for at, bps in ESTIMATES:
        GLib.timeout_add(int(at * 1000), send_estimate, bps)
    GLib.timeout_add(int(args.seconds * 1000), loop.quit)

    pipeline.set_state(Gst.State.PLAYING)
    try:
        loop.run()
    finally:
        pipeline.set_state(Gst.State.NULL)
    print(f"{status['decisions']} decisions", flush=True)
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
