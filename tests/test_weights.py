import pytest
import torch

from fedsilo.messages import WeightRef
from fedsilo.weights import ChecksumError, copy_file, delete_state, local_path, read_state, write_state


def test_round_trip_through_a_folder_uri(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    ref = write_state(state, (tmp_path / "x" / "w.safetensors").as_uri())
    back = read_state(ref)
    assert torch.equal(back["a"], state["a"]) and torch.equal(back["b"], state["b"])
    assert len(ref.sha256) == 64
    delete_state(ref)
    assert not (tmp_path / "x" / "w.safetensors").exists()


def test_shared_memory_tensors_are_accepted(tmp_path):
    base = torch.randn(4)
    ref = write_state({"a": base, "tied": base}, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_state(ref)["tied"], base)


def test_a_changed_file_fails_its_checksum(tmp_path):
    path = tmp_path / "w.safetensors"
    ref = write_state({"a": torch.zeros(8)}, str(path))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="w.safetensors"):
        read_state(ref)


def test_a_ref_knows_its_size_and_a_published_copy_has_the_same_checksum(tmp_path):
    path = tmp_path / "w.safetensors"
    ref = write_state({"a": torch.ones(100)}, path.as_uri())
    assert ref.size == path.stat().st_size
    copy = copy_file(path, (tmp_path / "shared" / "c.safetensors").as_uri())
    assert (copy.sha256, copy.size) == (ref.sha256, ref.size)
    assert local_path(ref) == str(path)


def test_weights_this_process_uploaded_are_read_back_without_a_download(tmp_path, monkeypatch):
    from fedsilo import artifacts

    state = {"w": torch.arange(4.0)}
    uri = "memory-store://bucket/global-001.safetensors"  # any remote URL scheme fsspec knows
    stored = {}
    monkeypatch.setattr(artifacts, "write_bytes", lambda u, payload: stored.__setitem__(u, payload))
    monkeypatch.setattr(
        artifacts, "read_bytes", lambda u: (_ for _ in ()).throw(AssertionError("downloaded"))
    )
    ref = write_state(state, uri)
    assert torch.equal(read_state(ref)["w"], state["w"])
    other = WeightRef(uri, "0" * 64, ref.size)  # a reference to other bytes at that URI is not served
    with pytest.raises(AssertionError, match="downloaded"):
        read_state(other)
