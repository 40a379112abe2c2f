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


def test_a_resume_names_rows_past_the_checkpoint_and_lines_with_no_step_apart(tmp_path, capsys):
    # A malformed line in the middle of metrics.jsonl was counted as a row "logged after step
    # 5 (past the checkpoint ...)".
    rows = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(rows[:2] + ["{not json"] + rows[2:] + [json.dumps({"step": 7})]) + "\n")
    MetricsWriter(str(tmp_path), enabled=True, start_step=5).close()
    path = tmp_path / "metrics.jsonl"
    assert capsys.readouterr().out == (
        f"[metrics] 1 row(s) of {path} logged after step 5 (past the checkpoint this run starts "
        "from) and 1 line(s) of it with no step (cut short or not JSON) moved to "
        "metrics.discarded.jsonl.\n")
    assert path.read_text() == "\n".join(rows) + "\n"
    (tmp_path / "metrics.jsonl").write_text(rows[0] + '\n{"step": 2, "lo\n')
    MetricsWriter(str(tmp_path), enabled=True, start_step=5).close()
    assert capsys.readouterr().out == (
        f"[metrics] 1 line(s) of {path} with no step (cut short or not JSON) moved to "
        "metrics.discarded.jsonl.\n")
    assert (tmp_path / "metrics.discarded.jsonl").read_text().splitlines() == [
        "{not json", json.dumps({"step": 7}), '{"step": 2, "lo']
