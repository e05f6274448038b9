"""metrics.jsonl and the workdir lock on object stores: appended in batches,
never rewritten per row; the lock's heartbeat at a bounded rate.

Remote semantics on local files: `paths.is_remote` is patched to say yes
(whole-object writes, no append), and every `paths.write_text` is counted.
The same code against the GCS emulator: tests/test_remote_workdir.py.
"""

import json
import os

import pytest

from mi_ssl_jax import checkpointing, metrics_writer, paths


@pytest.fixture
def uploads(monkeypatch):
  """Remote semantics; returns the list of (name, bytes) of every object
  written through the path layer."""
  monkeypatch.setattr(paths, "is_remote", lambda p: True)
  written = []
  real = paths.write_text

  def counting(path, text):
    written.append((paths.as_path(path).name, len(text)))
    # An object store has no folders; local files need theirs.
    paths.as_path(path).parent.mkdir(parents=True, exist_ok=True)
    return real(path, text)

  monkeypatch.setattr(paths, "write_text", counting)
  return written


def _line(i):
  return json.dumps({"step": i, "loss": 1.0 / i})


def test_remote_lines_go_out_in_batches_merged_at_a_bounded_rate(
    tmp_path, uploads):
  path = tmp_path / "metrics.jsonl"
  log = paths.JsonlAppender(path, flush_seconds=3600, max_parts=4)
  log.write(_line(1))  # the first line goes out at once
  assert paths.read_appended_lines(path) == [_line(1)]
  for i in range(2, 11):
    log.write(_line(i))  # buffered: less than flush_seconds since
  assert len(uploads) == 1
  for batch in range(3):  # e.g. one flush per checkpoint
    log.flush()
    log.write(_line(11 + batch))
  # Parts 1..4 were merged into the file after the 4th; one part since.
  assert [n for n, _ in uploads].count("metrics.jsonl") == 1
  assert len(os.listdir(paths.parts_dir(path))) == 0
  log.flush()
  assert len(os.listdir(paths.parts_dir(path))) == 1
  assert paths.read_appended_lines(path) == [_line(i) for i in range(1, 14)]
  log.close()  # merges: one file, no parts
  assert not os.listdir(paths.parts_dir(path))
  assert path.read_text().splitlines() == [_line(i) for i in range(1, 14)]
  # Uploads grow with the lines, not with lines x flushes (the old
  # whole-file rewrite per row sent 1 + 2 + ... + 13 lines).
  sent = sum(size for _, size in uploads)
  assert sent < 3 * len(path.read_text())
  assert len(uploads) == 7  # 5 parts, 2 merges


def test_remote_flushes_at_most_once_per_interval(tmp_path, uploads,
                                                  monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(paths.time, "monotonic", lambda: clock[0])
  log = paths.JsonlAppender(tmp_path / "m.jsonl", flush_seconds=60)
  for i in range(1, 121):  # one line per second for two minutes
    log.write(_line(i))
    clock[0] += 1.0
  assert len(uploads) == 2  # at 0 s, then once 60 s had passed
  log.close()
  assert paths.read_appended_lines(tmp_path / "m.jsonl") == [
      _line(i) for i in range(1, 121)]


def test_resume_drops_rows_past_the_step_of_a_killed_remote_run(
    tmp_path, uploads):
  path = tmp_path / "metrics.jsonl"
  log = paths.JsonlAppender(path, flush_seconds=0)  # every line a part
  for i in range(1, 7):
    log.write(_line(i))
  del log  # killed: never closed, its parts are left
  assert len(os.listdir(paths.parts_dir(path))) == 6
  rows = metrics_writer.read_metrics(str(tmp_path))  # a live run's reader
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  writer = metrics_writer.MetricsWriter(str(tmp_path), 10, start_step=4,
                                        tensorboard=False)
  assert not os.listdir(paths.parts_dir(path))  # merged once, trimmed
  writer.write_scalars(5, {"loss": 0.5})
  writer.close()
  assert [r["step"] for r in metrics_writer.read_metrics(str(tmp_path))] == [
      1, 2, 3, 4, 5]


def test_local_file_is_appended_and_truncated_never_rewritten(tmp_path):
  path = tmp_path / "metrics.jsonl"
  log = paths.JsonlAppender(path)
  for i in range(1, 5):
    log.write(_line(i))
    assert path.read_text().splitlines()[-1] == _line(i)  # as it is logged
  log.close()
  with open(path, "a") as f:
    f.write('{"step": 5, "lo')  # a torn line of a killed run
  inode = os.stat(path).st_ino
  writer = metrics_writer.MetricsWriter(str(tmp_path), 10, start_step=3,
                                        tensorboard=False)
  writer.write_scalars(4, {"loss": 0.25})
  writer.close()
  assert os.stat(path).st_ino == inode  # truncated in place, not replaced
  lines = path.read_text().splitlines()
  assert lines[:3] == [_line(i) for i in range(1, 4)]
  assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
  assert not paths.parts_dir(path).exists()


def test_metrics_writer_flushes_rows_with_each_checkpoint(tmp_path, uploads):
  writer = metrics_writer.MetricsWriter(str(tmp_path), 10, tensorboard=False)
  for step in range(1, 4):
    writer.write_scalars(step, {"loss": 1.0})
  assert [r["step"] for r in metrics_writer.read_metrics(str(tmp_path))] == [
      1]  # first row at once, the others buffered (REMOTE_FLUSH_SECONDS)
  writer.flush_rows()  # what the loop does at a checkpoint
  assert [r["step"] for r in metrics_writer.read_metrics(str(tmp_path))] == [
      1, 2, 3]
  writer.close()


def test_lock_heartbeat_is_written_at_a_bounded_rate(tmp_path, monkeypatch):
  clock = [1000.0]
  monkeypatch.setattr(checkpointing.time, "monotonic", lambda: clock[0])
  lock = checkpointing.WorkdirLock(str(tmp_path))
  assert lock.heartbeat_seconds == 60.0  # min(60, 900 / 10)
  assert checkpointing.WorkdirLock(str(tmp_path), stale_seconds=120
                                   ).heartbeat_seconds == 12.0
  lock.acquire()
  first = json.loads((tmp_path / ".lock").read_text())["heartbeat_unix"]
  beats = 0
  for _ in range(600):  # a log step every 0.5 s for five minutes
    clock[0] += 0.5
    beats += lock.heartbeat()
  assert beats == 5
  assert json.loads((tmp_path / ".lock").read_text())["heartbeat_unix"] >= (
      first)
  lock.release()
  assert not lock.heartbeat()  # released: nothing written
  assert not (tmp_path / ".lock").exists()
