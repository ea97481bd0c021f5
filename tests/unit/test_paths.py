"""Model names resolve only inside the configured roots: no absolute paths, '..', or symlink escapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import InvalidArgument, NotFound
from service.runtime.paths import confined_path, resolve_model_dir


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "org" / "model").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "root"


@pytest.mark.parametrize(
    "name",
    ["", "/etc", "/etc/passwd", "..", "../outside", "org/../../outside", "org/..", "a\\..\\b", "model\x00", "//server/share"],
)
def test_names_that_leave_the_root_by_spelling_are_refused(root: Path, name: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        confined_path(root, name, "model_name")
    assert error.value.field == "model_name"


def test_a_name_inside_the_root_resolves_under_it(root: Path) -> None:
    assert confined_path(root, "org/model", "model_name") == (root / "org" / "model").resolve()


def test_a_symlink_leading_out_of_the_root_is_refused(root: Path) -> None:
    (root / "escape").symlink_to(root.parent / "outside")
    with pytest.raises(InvalidArgument, match="symlink"):
        confined_path(root, "escape", "model_name")


def test_a_symlinked_directory_in_the_middle_of_the_name_is_refused(root: Path) -> None:
    (root.parent / "outside" / "model").mkdir()
    (root / "org" / "link").symlink_to(root.parent / "outside")
    with pytest.raises(InvalidArgument, match="symlink"):
        confined_path(root, "org/link/model", "model_name")


def test_a_symlink_to_an_absolute_path_inside_the_root_is_allowed(root: Path) -> None:
    (root / "alias").symlink_to(root / "org" / "model")
    assert confined_path(root, "alias", "model_name") == (root / "org" / "model").resolve()


def test_a_root_that_is_itself_a_symlink_still_confines(root: Path, tmp_path: Path) -> None:
    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(root)
    assert confined_path(linked_root, "org/model", "model_name") == (root / "org" / "model").resolve()
    with pytest.raises(InvalidArgument):
        confined_path(linked_root, "../outside", "model_name")


def test_an_unknown_model_is_not_found_and_names_no_server_path(root: Path) -> None:
    with pytest.raises(NotFound) as error:
        resolve_model_dir("org/missing", (root,), root.parent / "cache")
    assert str(root) not in str(error.value)


def test_absolute_names_are_refused_even_without_roots(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        resolve_model_dir("/etc", (), tmp_path / "cache")
    with pytest.raises(InvalidArgument):
        resolve_model_dir("../etc", (), tmp_path / "cache")


def test_a_directory_whose_config_needs_remote_code_is_refused(root: Path) -> None:
    model = root / "org" / "model"
    (model / "config.json").write_text('{"model_type": "not_in_transformers", "auto_map": {"AutoConfig": "custom.Config"}}')
    (model / "custom.py").write_text(f"open({str(root / 'ran')!r}, 'w')\n")
    with pytest.raises(InvalidArgument, match="trust_remote_code"):
        resolve_model_dir("org/model", (root,), root.parent / "cache")
    assert not (root / "ran").exists()
