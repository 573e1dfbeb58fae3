"""`wardwatch capture-info`: read a capture and print its format and counters."""

import json

import click
import numpy as np

from engine.capture.files import CaptureError, open_capture


def summarize_capture(source: str) -> dict:
    """Read the whole capture at `source` and return its format, interfaces, counters and time span.

    Raises CaptureError, after reading every packet before the damage, when
    the capture is unreadable or stops at a corrupt record.
    """
    earliest_ts_ns = None
    latest_ts_ns = None
    with open_capture(source) as reader:
        for batch in reader:
            # Timestamps of 0 are Simple Packet Blocks without a timestamp.
            stamps = batch.packets["ts_ns"]
            stamps = stamps[stamps != 0]
            if stamps.shape[0] == 0:
                continue
            low = int(np.min(stamps))
            high = int(np.max(stamps))
            earliest_ts_ns = low if earliest_ts_ns is None else min(earliest_ts_ns, low)
            latest_ts_ns = high if latest_ts_ns is None else max(latest_ts_ns, high)
        return {
            "source": reader.name,
            "format": reader.format,
            "compression": reader.compression,
            "interfaces": reader.interfaces,
            "stats": reader.stats,
            "earliest_ts_ns": earliest_ts_ns,
            "latest_ts_ns": latest_ts_ns,
        }


def format_summary(summary: dict) -> str:
    """Render summarize_capture() output as aligned text lines."""
    rows = [("source", summary["source"])]
    file_format = summary["format"]
    if summary["compression"]:
        file_format += f" ({summary['compression']} compressed)"
    rows.append(("format", file_format))
    stats = summary["stats"]
    rows.append(("packets", stats["packets"]))
    rows.append(("bytes", f"{stats['bytes']} captured"))
    if summary["earliest_ts_ns"] is not None:
        duration_s = (summary["latest_ts_ns"] - summary["earliest_ts_ns"]) / 1e9
        rows.append(("earliest_ts_ns", summary["earliest_ts_ns"]))
        rows.append(("latest_ts_ns", summary["latest_ts_ns"]))
        rows.append(("duration_s", f"{duration_s:.9f}"))
    for interface in summary["interfaces"]:
        description = (
            f"link_type {interface['link_type']}, snaplen {interface['snaplen']}, "
            f"ts_resolution_ns {interface['ts_resolution_ns']:g}"
        )
        if interface["name"]:
            description += f", name {interface['name']}"
        rows.append((f"interface {interface['iface_id']}", description))
    for name, value in stats.items():
        if name not in ("packets", "bytes") and value:
            rows.append((name, value))
    return "\n".join(f"{label:<24s}{value}" for label, value in rows)


@click.command("capture-info")
@click.argument("capture")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def capture_info(capture, as_json):
    """Read CAPTURE and print its format, interfaces and anomaly counters.

    CAPTURE is a pcap or pcapng file, optionally gzip or zstd compressed,
    or - for stdin.
    """
    try:
        summary = summarize_capture(capture)
    except CaptureError as error:
        raise click.ClickException(str(error)) from error
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo(format_summary(summary))
