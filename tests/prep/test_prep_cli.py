"""The gpunet-prep command line: convert, summary line, info."""

import json

from prep_fixtures import fer_rows, write_fer_csv

from data_prep import cli


def test_convert_and_info(tmp_path, capsys):
    src = write_fer_csv(tmp_path / "fer2013.csv", fer_rows(21))
    out = tmp_path / "sub" / "fer.h5"
    argv = ["fer2013", str(src), "-o", str(out), "--compress", "gzip"]
    assert cli.main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert line.startswith(f"wrote {out}: train 7, val 7, test 7 (1x48x48 uint8")
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("fer2013", "6 neutral", "0 angry", "sha256", "md5", "usage PublicTest", "gzip", "mean"):
        assert word in text
    assert cli.main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["command"] == "gpunet-prep " + " ".join(argv)
    assert info["splits"]["test"]["class_counts"]["angry"] == 1
    assert cli.main(argv) == 2  # exists, no --force: bad input
    assert "--force" in capsys.readouterr().err


def test_info_on_foreign_file(tmp_path, capsys):
    (tmp_path / "x.h5").write_bytes(b"nope")
    assert cli.main(["info", str(tmp_path / "x.h5")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'x.h5'}")
