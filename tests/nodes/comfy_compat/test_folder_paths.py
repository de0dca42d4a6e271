"""``folder_paths`` answers from the runtime's folders: what is in the model folders is listed and found,
what packs add joins them, and saved files are numbered as ComfyUI numbers them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodes.folders import Folders, UnsafePathError
from nodes.runtime import Runtime


def place(folder: Path, name: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    return path


def test_files_in_the_model_folders_are_listed_and_resolved(folders: Folders) -> None:
    import folder_paths

    checkpoint = place(folders.models, "checkpoints/sd15/base.safetensors")
    place(folders.models, "checkpoints/notes.txt")
    encoder = place(folders.models, "clip/t5.safetensors")
    assert folder_paths.get_filename_list("checkpoints") == ["sd15/base.safetensors"]
    assert folder_paths.get_full_path("checkpoints", "sd15/base.safetensors") == str(checkpoint)
    assert folder_paths.get_full_path_or_raise("checkpoints", "sd15/base.safetensors") == str(checkpoint)
    for key in ("clip", "text_encoders"):  # the legacy and the current name of one folder key
        assert folder_paths.get_filename_list(key) == ["t5.safetensors"]
        assert folder_paths.get_full_path(key, "t5.safetensors") == str(encoder)


def test_the_answers_are_those_of_loom_s_own_loaders(runtime: Runtime, folders: Folders) -> None:
    import folder_paths

    place(folders.models, "loras/a.safetensors")
    assert folder_paths.get_filename_list("loras") == runtime.model_paths.names("loras")
    assert folder_paths.get_folder_paths("unet") == [str(path) for path in runtime.model_paths.folders("unet")]


def test_a_missing_file_is_none_or_an_error_naming_the_folder_and_the_file(folders: Folders) -> None:
    import folder_paths

    assert folder_paths.get_full_path("vae", "missing.safetensors") is None
    assert folder_paths.get_full_path("vae", "../checkpoints/x.safetensors") is None
    assert folder_paths.get_full_path("no_such_key", "x.safetensors") is None
    with pytest.raises(FileNotFoundError, match=r"vae model 'missing.safetensors' not found; searched: .*models/vae"):
        folder_paths.get_full_path_or_raise("vae", "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="no model folder 'no_such_key'.*known: .*checkpoints"):
        folder_paths.get_full_path_or_raise("no_such_key", "x.safetensors")
    with pytest.raises(KeyError, match="unknown model folder 'no_such_key'"):
        folder_paths.get_filename_list("no_such_key")


def test_directories_are_the_runtime_s_and_read_when_asked(folders: Folders) -> None:
    import folder_paths

    assert folder_paths.models_dir == str(folders.models)
    assert folder_paths.base_path == str(folders.base)
    assert folder_paths.output_directory == folder_paths.get_output_directory() == str(folders.output)
    assert folder_paths.get_input_directory() == str(folders.input)
    assert folder_paths.get_temp_directory() == str(folders.temp)
    assert folder_paths.get_user_directory() == str(folders.user)
    assert folder_paths.get_directory_by_type("temp") == str(folders.temp)
    assert folder_paths.get_directory_by_type("models") is None
    with pytest.raises(AttributeError, match="no attribute 'set_output_directory'"):
        folder_paths.set_output_directory  # noqa: B018


def test_a_pack_s_folders_and_extensions_join_the_runtime_s(tmp_path: Path, folders: Folders) -> None:
    import folder_paths

    mine = tmp_path / "pack_models"
    place(mine, "ip.bin")
    place(mine, "readme.md")
    folder_paths.folder_names_and_paths["ipadapter"] = ([str(mine)], folder_paths.supported_pt_extensions)
    assert "ipadapter" in folder_paths.folder_names_and_paths
    assert folder_paths.get_filename_list("ipadapter") == ["ip.bin"]

    extra = tmp_path / "more_loras"
    place(extra, "extra.safetensors")
    place(folders.models, "loras/own.safetensors")
    folder_paths.add_model_folder_path("loras", str(extra))
    assert folder_paths.get_filename_list("loras") == ["extra.safetensors", "own.safetensors"]
    assert folder_paths.get_folder_paths("loras")[-1] == str(extra)

    place(folders.models, "unet/q4.gguf")
    folder_paths.folder_names_and_paths["unet"][1].add(".gguf")  # how GGUF packs extend a key
    assert "q4.gguf" in folder_paths.get_filename_list("diffusion_models")

    appended = tmp_path / "appended"
    place(appended, "v.safetensors")
    folder_paths.folder_names_and_paths["vae"][0].append(str(appended))
    assert folder_paths.get_full_path("vae", "v.safetensors") == str(appended / "v.safetensors")


def test_a_folder_added_as_default_is_searched_first(tmp_path: Path, folders: Folders) -> None:
    import folder_paths

    place(folders.models, "vae/same.safetensors")
    preferred = place(tmp_path / "preferred", "same.safetensors")
    folder_paths.add_model_folder_path("vae", str(preferred.parent), is_default=True)
    assert folder_paths.get_full_path("vae", "same.safetensors") == str(preferred)


def test_loom_s_folders_cannot_be_removed_through_the_mapping() -> None:
    import folder_paths

    with pytest.raises(TypeError, match="can only be added to"):
        folder_paths.folder_names_and_paths["checkpoints"][0].remove(folder_paths.get_folder_paths("checkpoints")[0])
    with pytest.raises(TypeError, match="cannot be removed"):
        del folder_paths.folder_names_and_paths["checkpoints"]


def test_save_paths_count_up_like_comfyui(folders: Folders) -> None:
    import folder_paths

    output = folder_paths.get_output_directory()
    folder, filename, counter, subfolder, prefix = folder_paths.get_save_image_path("shots/cat", output, 64, 32)
    assert (folder, filename, counter, subfolder, prefix) == (
        str(folders.output / "shots"),
        "cat",
        1,
        "shots",
        "shots/cat",
    )
    for name in ("cat_00001_.png", "cat_00007.mp4", "cat_00003_.png", "catalog_00099_.png", "cat_final.png"):
        (folders.output / "shots" / name).write_bytes(b"")
    assert folder_paths.get_save_image_path("shots/cat", output)[2] == 8

    folder, filename, counter, subfolder, prefix = folder_paths.get_save_image_path(
        "%width%x%height%/img", output, 64, 32
    )
    assert (filename, subfolder, prefix, counter) == ("img", "64x32", "64x32/img", 1)
    assert os.path.isdir(folder)


@pytest.mark.parametrize("prefix", ["../escape/cat", "/etc/cat", "a/../../cat"])
def test_save_paths_outside_the_output_folder_are_refused(prefix: str) -> None:
    import folder_paths

    with pytest.raises(UnsafePathError):
        folder_paths.get_save_image_path(prefix, folder_paths.get_output_directory())


def test_annotated_names_point_into_their_folder(folders: Folders) -> None:
    import folder_paths

    (folders.output / "done.png").write_bytes(b"")
    assert folder_paths.get_annotated_filepath("done.png [output]") == str(folders.output / "done.png")
    assert folder_paths.get_annotated_filepath("photo.png") == str(folders.input / "photo.png")
    assert folder_paths.exists_annotated_filepath("done.png [output]")
    assert not folder_paths.exists_annotated_filepath("done.png")
    assert not folder_paths.exists_annotated_filepath("../../etc/passwd [temp]")
    with pytest.raises(ValueError, match="outside the folder"):
        folder_paths.get_annotated_filepath("../secret.png [input]")


def test_filter_files_extensions_keeps_matching_names_sorted() -> None:
    import folder_paths

    files = ["b.PT", "a.safetensors", "c.txt"]
    assert folder_paths.filter_files_extensions(files, {".pt", ".safetensors"}) == ["a.safetensors", "b.PT"]
    assert folder_paths.filter_files_extensions(files, []) == ["a.safetensors", "b.PT", "c.txt"]


def test_custom_nodes_is_the_repository_s_plugin_folder() -> None:
    import folder_paths

    repository = Path(__file__).resolve().parents[3]
    assert folder_paths.get_folder_paths("custom_nodes") == [str(repository / "custom_nodes")]


def test_an_extension_added_to_supported_pt_extensions_is_listed_everywhere_it_applies(folders: Folders) -> None:
    import folder_paths

    place(folders.models, "checkpoints/model.gguf")
    place(folders.models, "loras/style.gguf")
    assert folder_paths.get_filename_list("checkpoints") == []
    folder_paths.supported_pt_extensions.add(".gguf")
    assert folder_paths.get_filename_list("checkpoints") == ["model.gguf"]
    assert folder_paths.get_filename_list("loras") == ["style.gguf"]


def test_a_symlink_loop_in_a_pack_folder_is_listed_once(tmp_path: Path) -> None:
    import folder_paths

    mine = tmp_path / "pack"
    place(mine, "sub/a.bin")
    (mine / "sub" / "loop").symlink_to(mine)
    folder_paths.add_model_folder_path("pack_models", str(mine))
    assert folder_paths.get_filename_list("pack_models") == ["sub/a.bin"]
