"""MetricsWriter: metrics.jsonl keeps every value; TensorBoard gets no point for NaN."""
import json
import logging
import math
import struct

from tensorboardX.proto import event_pb2

from tl_jax.metrics_writer import MetricsWriter


def read_events(folder):
    """(tag, step, value) of every scalar in the event files under `folder` (TFRecord framing:
    length u64, its crc u32, the record, its crc u32)."""
    out = []
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out.append((v.tag, event.step, v.simple_value))
    return out


def test_nan_is_kept_in_jsonl_and_left_out_of_tensorboard_without_a_warning(tmp_path, caplog):
    writer = MetricsWriter(str(tmp_path), enabled=True)
    with caplog.at_level(logging.WARNING):
        writer.write(5, {"loss": 1.5, "eval/precision": float("nan"), "grad_norm": float("inf")})
    writer.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 5, "loss": 1.5, "eval/precision": "nan", "grad_norm": "inf"}
    events = read_events(tmp_path / "tensorboard")
    assert [(t, s) for t, s, _ in events] == [("loss", 5), ("grad_norm", 5)]
    assert events[0][2] == 1.5 and math.isinf(events[1][2])
    # One warning, for the inf (a real value worth flagging); none for the NaN.
    assert sum("NaN or Inf" in r.getMessage() for r in caplog.records) == 1
