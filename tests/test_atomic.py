import pytest

from zerosearch.atomic import atomic_path


def test_file_replaced_only_on_success(tmp_path):
    target = tmp_path / "sub" / "m.json"
    with atomic_path(target) as tmp:
        tmp.write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "one"  # the old file survives a crash
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]  # no temp left behind


def test_directory_replaced_whole(tmp_path):
    target = tmp_path / "ckpt"
    for content in ("a", "b"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / content).write_text(content)
    assert [p.name for p in target.iterdir()] == ["b"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "c").write_text("c")
            raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
