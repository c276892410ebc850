"""`magicfuse fuse`: files and folders in, five output folders with the same names out."""
import numpy as np
import pytest

from magicfuse_core.cli import main as cli_main
from magicfuse_core.imageio import read_gray, read_rgb, write_png


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    write_png(folder / "a.png", rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    write_png(folder / "b.png", rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    write_png(tmp_path / "c.png", rng.integers(0, 256, (20, 28), dtype=np.uint8))  # grey, other size
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder, tmp_path / "c.png"


def test_fuse_writes_every_output_for_every_readable_frame(inputs, tmp_path, capsys):
    folder, single = inputs
    out = tmp_path / "out"
    rc = cli_main(["fuse", str(folder), str(single), "--out", str(out), "--model", "random-tiny",
                   "--steps", "2", "--batch", "2"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "notes.txt" in err and "broken.png" in err and "UNTRAINED" in err
    for sub in ("magimg", "ikr", "ckg", "seg", "seg_labels"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["a.png", "b.png", "c.png"], sub
    assert read_rgb(out / "magimg" / "a.png").shape == (24, 40, 3)
    assert read_rgb(out / "magimg" / "c.png").shape == (20, 28, 3)
    labels = read_gray(out / "seg_labels" / "c.png")
    assert labels.shape == (20, 28) and labels.max() <= 8


def test_results_do_not_depend_on_batch_size(inputs, tmp_path):
    folder, _ = inputs
    for b in (1, 2):
        assert cli_main(["fuse", str(folder), "--out", str(tmp_path / f"b{b}"), "--model", "random-tiny",
                         "--steps", "2", "--batch", str(b), "--backend", "onnxruntime"]) == 0
    for name in ("a.png", "b.png"):
        a = read_rgb(tmp_path / "b1" / "magimg" / name).astype(int)
        b = read_rgb(tmp_path / "b2" / "magimg" / name).astype(int)
        # Same seeds; batched fp32 kernels may round differently: at most one grey level apart (fp32
        # everywhere here: on a CPU with native bf16, auto's bf16 step networks round more).
        assert np.abs(a - b).max() <= 1


def test_nothing_readable_is_a_failure(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    assert cli_main(["fuse", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "random-tiny"]) == 1
    assert "no images" in capsys.readouterr().err


def test_a_missing_model_folder_is_a_clear_error(inputs, tmp_path, capsys):
    folder, _ = inputs
    assert cli_main(["fuse", str(folder), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nope")]) == 2
    assert "model.json" in capsys.readouterr().err


def test_outputs_option_computes_and_writes_only_what_is_asked(inputs, tmp_path, monkeypatch):
    from magicfuse_core.pipeline import MagicFusePipeline

    folder, _ = inputs
    decoded = []
    real_decode = MagicFusePipeline._decode

    def counting_decode(self, out, wanted, *args):
        images = real_decode(self, out, wanted, *args)
        decoded.append(sorted(images))
        return images

    monkeypatch.setattr(MagicFusePipeline, "_decode", counting_decode)
    out = tmp_path / "out"
    assert cli_main(["fuse", str(folder), "--out", str(out), "--model", "random-tiny", "--steps", "1",
                     "--outputs", "magimg,seg"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["magimg", "seg", "seg_labels"]
    assert decoded and all(kinds == ["magimg"] for kinds in decoded)  # IKR and CKG never decoded


def test_outputs_option_rejects_unknown_kinds(inputs, tmp_path, capsys):
    folder, _ = inputs
    with pytest.raises(SystemExit):
        cli_main(["fuse", str(folder), "--out", str(tmp_path / "o"), "--outputs", "magimg,thermal"])
    assert "subset of magimg,ikr,ckg,seg" in capsys.readouterr().err
