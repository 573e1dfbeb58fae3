"""`wardwatch flows`: read captures, track flows, write one record per flow."""

from __future__ import annotations

import csv
import errno
import json
import os
import sys
import time
from pathlib import Path

import click

from engine.flows.table import (
    DEFAULT_ACTIVE_TIMEOUT_S,
    DEFAULT_CAPACITY,
    DEFAULT_CLOSE_DELAY_S,
    DEFAULT_IDLE_TIMEOUT_S,
    MAX_CAPACITY,
    MAX_TIMEOUT_S,
)

OUTPUT_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
EXIT_CAPTURE_ERROR = 1


class FlowWriter:
    """Writer of flow records to a text stream, as JSON lines or CSV with a header.

    write_flows() formats FLOW_DTYPE rows column by column; write() takes
    the dicts of flows_to_records(). Both write the same bytes for the same
    flows, and the CSV header is written once, before the first row.
    """

    def __init__(self, stream, output_format: str):
        self.stream = stream
        self.output_format = output_format
        self._csv = csv.writer(stream, lineterminator="\n") if output_format == "csv" else None
        self._csv_fields: list[str] | None = None
        self.count = 0

    def write_flows(self, flows) -> None:
        """Write one record per FLOW_DTYPE row."""
        from engine.flows.records import RECORD_FIELDS, iter_csv_text, iter_json_lines

        if len(flows) == 0:
            return
        if self.output_format == "jsonl":
            pieces = iter_json_lines(flows)
        else:
            self._write_csv_header(list(RECORD_FIELDS))
            pieces = iter_csv_text(flows)
        for piece in pieces:
            self.stream.write(piece)
        self.count += len(flows)

    def write(self, records: list[dict]) -> None:
        """Write one record per dict, as flows_to_records() returns them."""
        for record in records:
            if self.output_format == "jsonl":
                self.stream.write(json.dumps(record, separators=(",", ":")))
                self.stream.write("\n")
            else:
                row = dict(record)
                row["vlan_ids"] = ";".join(str(v) for v in row["vlan_ids"])
                self._write_csv_header(list(row))
                if list(row) != self._csv_fields:
                    raise ValueError(f"flow record fields {list(row)} differ from the CSV header {self._csv_fields}")
                self._csv.writerow(list(row.values()))
            self.count += 1

    def _write_csv_header(self, fields: list[str]) -> None:
        if self._csv_fields is None:
            self._csv.writerow(fields)
            self._csv_fields = fields


def _output_format(path: str, chosen: str | None) -> str:
    suffix = Path(path).suffix.lower()
    if chosen is not None:
        if suffix in OUTPUT_FORMATS and OUTPUT_FORMATS[suffix] != chosen:
            raise click.BadParameter(
                f"--format {chosen} contradicts the suffix of {path}; drop --format or rename the output",
                param_hint="'--format'",
            )
        return chosen
    if suffix not in OUTPUT_FORMATS:
        raise click.BadParameter(
            f"unsupported output suffix {suffix!r} in {path}; use .jsonl or .csv, or give --format",
            param_hint="'-o' / '--output'",
        )
    return OUTPUT_FORMATS[suffix]


# Flows formatted and written at a time at the end of input.
WRITE_SLICE_FLOWS = 8192


@click.command("flows")
@click.argument("captures", nargs=-1, required=True)
@click.option(
    "-o", "--output", metavar="FILE",
    help="Write flow records to FILE: JSON lines for .jsonl, CSV for .csv; - or no -o for stdout.",
)
@click.option(
    "--format", "output_format", type=click.Choice(sorted(set(OUTPUT_FORMATS.values()))), default=None,
    help="Record format, for an output whose name has no .jsonl or .csv suffix (a pipe, /dev/null).",
)
@click.option(
    "--idle-timeout", "idle_timeout_s", type=click.FloatRange(min=0, min_open=True, max=MAX_TIMEOUT_S),
    default=DEFAULT_IDLE_TIMEOUT_S, show_default=True,
    help="End a flow after this many seconds of capture time without packets.",
)
@click.option(
    "--active-timeout", "active_timeout_s", type=click.FloatRange(min=0, min_open=True, max=MAX_TIMEOUT_S),
    default=DEFAULT_ACTIVE_TIMEOUT_S, show_default=True,
    help="End a flow that has lasted this many seconds; later packets start a new flow.",
)
@click.option(
    "--close-delay", "close_delay_s", type=click.FloatRange(min=0, max=MAX_TIMEOUT_S),
    default=DEFAULT_CLOSE_DELAY_S, show_default=True,
    help="Keep a closed TCP flow until this many seconds of capture time pass without its packets, "
         "so late packets join it; 0 ends it at once.",
)
@click.option(
    "--capacity", type=click.IntRange(1, MAX_CAPACITY), default=DEFAULT_CAPACITY, show_default=True,
    help="Maximum live flows; when full, the least recently seen nearby flow is evicted.",
)
@click.option(
    "--community-id-seed", type=click.IntRange(0, 0xFFFF), default=0, show_default=True,
    help="Seed of the Community ID hash.",
)
def flows_command(captures, output, output_format, idle_timeout_s, active_timeout_s, close_delay_s, capacity,
                  community_id_seed):
    """Write one record per bidirectional flow in CAPTURE... (pcap or pcapng; - for stdin).

    The captures are read in the order given as one continuous capture, and
    every flow still open at the end is written with expiration "flushed".
    A summary (packets, flows, anomalies by name, throughput) goes to stderr.

    Exit codes: 0 success; 1 a capture could not be read (the flows read
    before the error are still written); 2 usage error.
    """
    # Imported here so `wardwatch --help` does not load the compiled kernels.
    from engine.capture import CaptureError, open_capture
    from engine.decode import anomaly_counts, decode_batch, new_anomaly_counters
    from engine.flows import FlowTable

    if output == "-":
        output = None  # standard output, as for captures
    output_format = _output_format(output, output_format) if output else (output_format or "jsonl")
    try:
        table = FlowTable(
            capacity=capacity,
            idle_timeout_s=idle_timeout_s,
            active_timeout_s=active_timeout_s,
            community_id_seed=community_id_seed,
            close_delay_s=close_delay_s,
        )
    except ValueError as error:
        # Click's FloatRange lets nan through, and FlowTable rejects it.
        raise click.BadParameter(str(error)) from error
    except MemoryError as error:
        raise click.ClickException(str(error)) from error
    counters = new_anomaly_counters()
    capture_stats: dict[str, int] = {}
    failure = None
    started = time.perf_counter()

    try:
        stream = open(output, "w", newline="") if output else sys.stdout
    except OSError as error:
        raise click.FileError(output, hint=error.strerror) from error
    try:
        writer = FlowWriter(stream, output_format)
        for capture in captures:
            try:
                with open_capture(capture) as reader:
                    _run_capture(capture, reader, table, counters, writer, decode_batch)
                    for name, value in reader.stats.items():
                        capture_stats[name] = capture_stats.get(name, 0) + value
            except OSError as error:
                if error.errno in _WRITE_ERRNOS:
                    raise
                failure = f"cannot read capture {capture}: {error}"
                break
            except CaptureError as error:
                failure = f"cannot read capture {capture}: {error}"
                break
        # The table may hold up to --capacity live flows, and the text of
        # one record is about 2 KB, so the flushed flows are written in slices.
        flushed = table.flush()
        for start in range(0, flushed.shape[0], WRITE_SLICE_FLOWS):
            writer.write_flows(flushed[start : start + WRITE_SLICE_FLOWS])
    except OSError as error:
        if error.errno in _WRITE_ERRNOS and error.filename is None:
            # A file object's write error names no file; the message should.
            raise OSError(error.errno, error.strerror, output or "standard output") from error
        raise
    finally:
        try:
            if output:
                stream.close()
            else:
                stream.flush()
        except OSError as error:
            raise OSError(error.errno, error.strerror, output or "standard output") from error

    elapsed_s = time.perf_counter() - started
    _print_summary(table.stats, capture_stats, anomaly_counts(counters), writer.count, elapsed_s)
    if failure:
        click.echo(f"error: {failure}", err=True)
        sys.exit(EXIT_CAPTURE_ERROR)


# errno values of a write that the disk cannot take, as opposed to a capture read error.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _run_capture(capture, reader, table, counters, writer, decode_batch):
    size = _plain_file_size(capture)
    show_bar = size is not None and sys.stderr.isatty()
    bar = click.progressbar(length=size, label=os.path.basename(capture), file=sys.stderr) if show_bar else None
    done = 0
    try:
        for batch in reader:
            decode_batch(batch.packets, batch.data, counters)
            writer.write_flows(table.update(batch.packets, batch.data))
            if bar is not None and batch.count:
                # A plain file is mapped whole, so data_offset is a file offset.
                last = batch.packets[batch.count - 1]
                end = int(last["data_offset"]) + int(last["caplen"])
                bar.update(max(0, end - done))
                done = max(done, end)
    finally:
        if bar is not None:
            bar.render_finish()


def _plain_file_size(capture: str) -> int | None:
    # Progress is shown for uncompressed regular files only: for a stream or
    # a compressed file the reader's offsets do not map to the file size.
    if capture == "-":
        return None
    try:
        with open(capture, "rb") as handle:
            magic = handle.read(4)
        size = os.path.getsize(capture)
    except OSError:
        return None
    if magic[:2] == b"\x1f\x8b" or magic == b"\x28\xb5\x2f\xfd":
        return None
    return size


def _print_summary(flow_stats, capture_stats, anomalies, flows_written, elapsed_s):
    packets = capture_stats.get("packets", flow_stats["packets"])
    rate = packets / elapsed_s if elapsed_s > 0 else 0.0
    lines = [
        f"packets: {packets}",
        f"flows: {flows_written}",
        f"packets without a flow: {flow_stats['packets_without_flow'] + flow_stats['packets_without_ports']}",
        f"elapsed: {elapsed_s:.3f} s ({rate:,.0f} packets/s)",
    ]
    problems = dict(anomalies)
    for name, count in capture_stats.items():
        if name not in ("packets", "bytes") and count:
            problems[name] = count
    for name in ("flow_table_full", "flows_evicted", "timestamp_backwards", "timestamp_jumps_held", "clock_steps_back",
                 "fragments_unattributed", "fragment_map_overwrites"):
        if flow_stats.get(name):
            problems[name] = flow_stats[name]
    if problems:
        lines.append("anomalies:")
        lines.extend(f"  {name}: {count}" for name, count in sorted(problems.items()))
    else:
        lines.append("anomalies: none")
    click.echo("\n".join(lines), err=True)
