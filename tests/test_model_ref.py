"""Model references: local folders and repo ids resolved offline from an HF hub cache on disk."""

import json
import socket

import pytest

from ernie_paddle.config.presets import PRESETS
from ernie_paddle.errors import ErnieError
from ernie_paddle.planning.model_ref import hub_cache_dir, load_config, resolve

REPO = "baidu/ERNIE-4.5-0.3B-PT"
COMMIT = "a" * 40


def lay_out_cache(hub, repo=REPO, commit=COMMIT, ref="main", with_config=True):
    """An HF hub cache entry as huggingface_hub writes it: blobs, refs/<ref>, snapshots/<commit> links."""
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / ref).write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    blobs = repo_dir / "blobs"
    blobs.mkdir()
    if with_config:
        (blobs / "cfgblob").write_text(json.dumps(PRESETS["0.3B"]))
        (snap / "config.json").symlink_to("../../blobs/cfgblob")
    return snap


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("model reference resolution tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_repo_id_resolves_from_temporary_hf_home(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snap = lay_out_cache(tmp_path / "hf" / "hub")
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    assert resolve(REPO) == snap
    assert resolve(f"{REPO}@{COMMIT}") == snap                 # a commit hash without a ref file
    assert load_config(REPO).hidden_size == 1024


def test_hf_hub_cache_wins_over_hf_home(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    snap = lay_out_cache(tmp_path / "cache", ref="v1")
    assert resolve(REPO, revision="v1") == snap
    with pytest.raises(ErnieError, match="revision 'main' is not in the cache"):
        resolve(REPO)


def test_missing_repo_fails_clearly_without_download(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ErnieError, match="not in the local Hugging Face cache.*never downloads") as e:
        resolve(REPO)
    assert str(tmp_path) in str(e.value)
    assert not (tmp_path / "hub").exists()                    # nothing was created either


def test_incomplete_snapshot_and_bad_paths(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    lay_out_cache(tmp_path / "hub", with_config=False)
    with pytest.raises(ErnieError, match="config.json not found"):
        resolve(REPO)
    with pytest.raises(ErnieError, match="no such folder"):
        resolve(str(tmp_path / "nope" / "deeper" / "x"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ErnieError, match="is a file"):
        resolve(tmp_path / "file.txt")


def test_local_folder_wins(tmp_path, no_network):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PRESETS["21B-A3B"]))
    assert resolve(folder) == folder.resolve()
    assert load_config(str(folder)).moe_num_experts == 64
