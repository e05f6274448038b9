"""The tables of docs/scaling.md are rewritten from the committed records
(`mi_ssl_jax.bench.scaling`, docs/figures/scaling/) without losing a row:
a row with no record keeps the doc's line for its command, a record
replaces exactly its row. No compiles (the records here are written by
hand with the fields a table line reads)."""

import json
import pathlib

import pytest

from mi_ssl_jax.bench import aot, scaling

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scaling.md"


def _rewrite(doc, out, *flags):
  scaling.main(["--markdown", f"--docs={doc}", f"--out={out}", *flags])
  return doc.read_text()


def _row(table, config, topology, *sets):
  (row,) = [r for r in scaling.rows() if r["table"] == table
            and r["config"] == config and r["topology"] == topology
            and r["sets"] == list(sets) and not r["finetune"]]
  return row


def _record(row, peak_gib, compile_s):
  topo = aot.parse_topology(row["topology"])
  hbm = topo.chip.hbm_gib * aot.GIB
  return {"command": scaling.command(row), "row": row,
          "topology": row["topology"], "hosts": topo.hosts,
          "global_batch": 1024, "batch_per_chip": 1024 / topo.chips,
          "params": 38_200_000, "model_flops_per_step": 7.5e13,
          "model_flops_per_chip": 7.5e13 / topo.chips,
          "bytes_accessed_per_chip": 8e10, "hbm_bytes": hbm,
          "memory_per_chip": {"peak_bytes": peak_gib * aot.GIB},
          "fits": peak_gib < 0.95 * topo.chip.hbm_gib, "compile_error": None,
          "compile_s": compile_s, "xla_remat": None, "xla_remat_known": True}


def _table_lines(text):
  begin, end = text.index(scaling.BEGIN), text.index(scaling.END)
  return text[begin:end].splitlines()


@pytest.mark.parametrize("tables", ["", "--tables=targets"])
def test_rewrite_without_records_keeps_the_doc(tmp_path, tables, capsys):
  """No record at all (a fresh clone before any compile): every table of
  the doc comes back unchanged, also when only some tables are chosen."""
  doc = tmp_path / "scaling.md"
  doc.write_text(DOC.read_text())
  assert _rewrite(doc, tmp_path / "none", *filter(None, [tables])) == (
      DOC.read_text())
  kept = scaling.doc_lines(doc, doc.read_text())
  assert set(kept) == set(scaling.TABLES)
  assert sum(map(len, kept.values())) >= 20


def test_a_record_replaces_its_row_and_adds_a_missing_one(tmp_path):
  """A record of a row the doc has (mec_r50) replaces exactly that line; a
  record of a row it lacks (ViT-H, last of the compile table) adds its line
  and its command at their places; every other line stays."""
  doc, out = tmp_path / "scaling.md", tmp_path / "records"
  mec = _row("recipes", "mec_r50", "v4-32")
  (vith,) = [r for r in scaling.rows() if r["note"] == "ViT-H/14 M-MAE"]
  text, vith_cmd = DOC.read_text(), "    " + scaling.command(vith)
  # The doc as it was before the ViT-H row was compiled.
  vith_old = scaling.doc_lines(DOC, text)["compile"].get(vith_cmd.strip())
  if vith_old is not None:
    text = text.replace(vith_old + "\n", "").replace(vith_cmd + "\n", "")
  doc.write_text(text)
  before = _table_lines(text)
  (old_mec,) = [x for x in before if x.startswith("| mec_r50 ")]
  assert vith_cmd not in before
  out.mkdir()
  for row, peak, secs in ((mec, 7.25, 4321), (vith, 9.5, 1234)):
    (out / (scaling.row_id(row) + ".json")).write_text(
        json.dumps(_record(row, peak, secs)))
  after = _table_lines(_rewrite(doc, out))
  (new_mec,) = [x for x in after if x.startswith("| mec_r50 ")]
  assert "| 7.2 / 32 |" in new_mec and new_mec.endswith("| 4321 |")
  assert after.index(new_mec) == before.index(old_mec)
  assert [x for x in before if x not in after] == [old_mec]
  vith_line = "| ViT-H/14 M-MAE | v5e-8, 1024 | " + ", ".join(
      vith["sets"]) + " | 1234 | 9.5 / 16 | yes |"
  assert [x for x in after if x not in before] == [
      new_mec, vith_line, vith_cmd]
  start = after.index("### " + scaling.TITLES["compile"])
  end = next((i for i in range(start + 1, len(after))
              if after[i].startswith("### ")), len(after))
  compile_section = after[start:end]
  # Its line and its command hold the same place among the table's rows
  # and among the commands (rows() order).
  table_rows = [x for x in compile_section if x.startswith("| ")][1:]
  commands = [x for x in compile_section if x.startswith("    python -m ")]
  assert table_rows.index(vith_line) == commands.index(vith_cmd)


def test_fits_cells_say_whether_xla_rematerialised(tmp_path):
  """A record says whether XLA:TPU had to rematerialise on its own to fit;
  a record without that field, and a doc line without a record, say it is
  not known (†, with the note under the table)."""
  doc, out = tmp_path / "scaling.md", tmp_path / "records"
  doc.write_text(DOC.read_text())
  out.mkdir()
  mec = _row("recipes", "mec_r50", "v4-32")
  matrix = _row("recipes", "matrix_ssl_r50", "v4-32")
  remat = dict(_record(mec, 28.9, 512),
               xla_remat={"before_bytes": 36.95 * aot.GIB,
                          "after_bytes": 28.69 * aot.GIB})
  old = _record(matrix, 5.9, 953)
  del old["xla_remat"], old["xla_remat_known"]
  for row, record in ((mec, remat), (matrix, old)):
    (out / (scaling.row_id(row) + ".json")).write_text(json.dumps(record))
  lines = _table_lines(_rewrite(doc, out, "--tables=recipes"))
  (mec_line,) = [x for x in lines if x.startswith("| mec_r50 ")]
  (matrix_line,) = [x for x in lines if x.startswith("| matrix_ssl_r50 ")
                    and "| recipe defaults |" in x]
  assert "| 28.9 / 32 | yes, XLA remat 37.0 → 28.7 GiB |" in mec_line
  assert "| 5.9 / 32 | yes† |" in matrix_line
  assert scaling.UNKNOWN_REMAT_NOTE in lines


@pytest.mark.parametrize("text,expected", [
    ("# no tables here\n", "has no"),
    (f"{scaling.BEGIN}\n### Largest batch per chip\n\n| a | b |\n|---|---|\n"
     f"| x | y |\n\nCommands:\n\n\n{scaling.END}\n", "1 rows and 0 commands"),
])
def test_a_doc_it_cannot_read_is_one_error_line(tmp_path, capsys, text,
                                                expected):
  doc = tmp_path / "scaling.md"
  doc.write_text(text)
  with pytest.raises(SystemExit) as e:
    _rewrite(doc, tmp_path / "none")
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
  assert doc.read_text() == text  # not rewritten


def test_the_doc_shows_its_committed_records():
  """Every record in docs/figures/scaling/ belongs to a row of the tables
  and the doc's line for that row is the record's (the doc was rewritten
  after the record was added)."""
  records = scaling._stored(ROOT / scaling.RECORDS)  # noqa: SLF001
  assert records, "no records in " + scaling.RECORDS
  kept = scaling.doc_lines(DOC, DOC.read_text())
  for record in records:
    rows = [r for r in scaling.rows()
            if scaling.command(r) == record["command"]]
    assert rows, record["command"]
    for row in rows:
      line = scaling._line(  # noqa: SLF001
          scaling._complete(dict(record, row=row)))  # noqa: SLF001
      assert kept[row["table"]][record["command"]] == line


def test_a_row_reuses_its_searchs_compile_of_the_same_program(
    tmp_path, monkeypatch):
  """A row with no record of its own whose program a largest-batch search
  already compiled (the probe at the recipe's batch) takes that probe, with
  its XLA-remat flag, instead of compiling again; a probe at another batch
  is not that program."""
  out = tmp_path / "records"
  row = _row("recipes", "mmae_vitl", "v5e-8")
  search = dict(row, table="max_batch", find_max=True)
  probes = out / "probes" / scaling.row_id(search)
  probes.mkdir(parents=True)
  remat = {"before_bytes": 16.38 * aot.GIB, "after_bytes": 14.39 * aot.GIB}
  probe = dict(_record(row, 14.74, 987), xla_remat=remat, date="2026-12-05")
  del probe["command"], probe["row"]
  (probes / "128.json").write_text(json.dumps(probe))
  compiled = []
  monkeypatch.setattr(scaling.aot, "compile_step",
                      lambda config, topo: compiled.append(config) or {})
  record = scaling.run_row(row, str(out))
  assert not compiled
  assert record["xla_remat"] == remat and record["compile_s"] == 987
  assert record["from_search"] == scaling.row_id(search)
  stored = json.loads((out / (scaling.row_id(row) + ".json")).read_text())
  assert stored["command"] == scaling.command(row)
  assert stored["date"] == "2026-12-05"  # when the probe was compiled
  line = scaling._line(scaling._complete(stored))  # noqa: SLF001
  assert "| 14.7 / 16 | yes, XLA remat 16.4 → 14.4 GiB |" in line
  # The same search's probe at another batch: a compile of its own.
  (out / (scaling.row_id(row) + ".json")).unlink()
  (probes / "128.json").rename(probes / "64.json")
  probe["global_batch"] = 512
  (probes / "64.json").write_text(json.dumps(probe))
  monkeypatch.setattr(scaling.aot, "compile_step", lambda config, topo: (
      compiled.append(config) or dict(probe, global_batch=1024)))
  monkeypatch.setattr(scaling, "compiled_where", dict)  # no libtpu here
  scaling.run_row(row, str(out))
  assert [c.batch_size for c in compiled] == [1024]


def test_a_search_from_before_the_flag_marks_its_boundary(tmp_path):
  """A largest-batch record without the XLA-remat flag may have counted a
  compile that XLA rematerialised as fitting: its boundary is marked †
  and the note is under the table; with the flag, it is not."""
  doc, out = tmp_path / "scaling.md", tmp_path / "records"
  doc.write_text(DOC.read_text())
  out.mkdir()
  row = _row("max_batch", "mmae_vitb", "v5e-8", "model.remat='full'")
  record = dict(_record(row, 14.62, 600), max_batch_per_chip=808, chips=8,
                probe_peaks={"2048": 5.8 * aot.GIB, "1024": 3.3 * aot.GIB})
  del record["xla_remat"], record["xla_remat_known"]
  path = out / (scaling.row_id(row) + ".json")
  for known, cell in ((False, "**808**† per chip"), (True, "**808** per chip")):
    if known:
      record.update(xla_remat=None, xla_remat_known=True)
    path.write_text(json.dumps(record))
    text = _rewrite(doc, out, "--tables=max_batch")
    start = text.index("### " + scaling.TITLES["max_batch"])
    section = text[start:text.index("### ", start + 4)]
    (line,) = [x for x in section.splitlines()
               if x.startswith("| mmae_vitb | remat full |")]
    assert cell in line
    if not known:
      assert scaling.UNKNOWN_SEARCH_NOTE in section


def test_a_search_on_another_generation_fills_its_own_column(tmp_path):
  """A largest-batch search compiled on a v6e-8 is its own line, with the
  compile in the v6e column and no predictions (those come from the v5e-8
  searches); its command joins the table's commands."""
  doc, out = tmp_path / "scaling.md", tmp_path / "records"
  doc.write_text(DOC.read_text())
  out.mkdir()
  row = _row("max_batch", "mmae_vitb", "v6e-8")
  record = dict(_record(row, 28.15, 240), max_batch_per_chip=384, chips=8,
                probe_peaks={"1024": 10.0 * aot.GIB, "2048": 17.0 * aot.GIB})
  (out / (scaling.row_id(row) + ".json")).write_text(json.dumps(record))
  text = _rewrite(doc, out, "--tables=max_batch")
  start = text.index("### " + scaling.TITLES["max_batch"])
  section = text[start:text.index("### ", start + 4)].splitlines()
  head = next(x for x in section if x.startswith("| model |"))
  line = next(x for x in section if "**384** per chip" in x)
  cells = [c.strip() for c in line.strip("|").split("|")]
  columns = [c.strip() for c in head.strip("|").split("|")]
  assert cells[:2] == ["mmae_vitb", "data parallel"]
  assert cells[columns.index("v6e-8 (v6e)")] == (
      "**384** per chip (peak 28.1 GiB; compiled)")
  assert [c for i, c in enumerate(cells[2:], 2)
          if columns[i] != "v6e-8 (v6e)"] == ["—", "—", "—"]
  assert "    " + scaling.command(row) in section
