"""Which frames mask3d-ros-eval reads from the paths it is given."""
from mask3d_ros.tools.evaluate import expand_frames


def test_a_folder_of_frames_expands_whatever_the_dataset_setting(tmp_path):
    frames = tmp_path / "val"
    frames.mkdir()
    for name in ("test10.pcd", "test2.pcd", "scene.npz", "notes.txt"):
        (frames / name).touch()
    names = [path.name for path in expand_frames([frames], "auto")]
    assert names == ["scene.npz", "test2.pcd", "test10.pcd"]         # natural order, other files left out
    assert [path.name for path in expand_frames([frames], "mosd")] == ["test2.pcd", "test10.pcd"]


def test_a_scannet_scene_folder_stays_one_scene(tmp_path):
    scene = tmp_path / "scene0000_00"
    scene.mkdir()
    (scene / "scene0000_00_vh_clean_2.ply").touch()
    (scene / "scene0000_00_vh_clean_2.labels.ply").touch()
    assert expand_frames([scene], "auto") == [scene]
    single = tmp_path / "frame.pcd"
    assert expand_frames([single], "auto") == [single]
